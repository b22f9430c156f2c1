use events_core::domain_event;

struct Money(u64);

#[domain_event]
struct OrderPlaced {
    id: u32,
    total: Money,
}

fn main() {}

use events_core::domain_event;

#[domain_event]
#[domain_event(name = "orders.placed")]
struct OrderPlaced {
    id: u32,
}

fn main() {}

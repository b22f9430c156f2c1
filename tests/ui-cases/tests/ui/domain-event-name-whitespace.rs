use events_core::domain_event;

#[domain_event(name = "order placed")]
struct OrderPlaced {
    id: u32,
}

fn main() {}

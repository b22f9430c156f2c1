use events_core::domain_event;

#[domain_event(name = "")]
struct OrderPlaced {
    id: u32,
}

fn main() {}

use events_core::domain_event;

#[domain_event(crate = "events_core")]
struct OrderPlaced {
    id: u32,
}

#[domain_event(crate = events_core extra)]
struct OrderShipped {
    id: u32,
}

#[domain_event(crate)]
struct OrderCancelled {
    id: u32,
}

fn main() {}

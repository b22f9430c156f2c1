use events_core::domain_event;

#[domain_event(name = orders::order_placed)]
struct OrderPlaced {
    id: u32,
}

#[domain_event(name = 42)]
struct OrderShipped {
    id: u32,
}

fn main() {}

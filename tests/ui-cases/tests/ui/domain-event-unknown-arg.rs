use events_core::domain_event;

#[domain_event(nmae = "orders.order_placed")]
struct OrderPlaced {
    id: u32,
}

fn main() {}

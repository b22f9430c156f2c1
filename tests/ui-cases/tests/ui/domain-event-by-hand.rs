use events_core::{DomainEvent, EventDescriptor};

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    id: u32,
}

impl DomainEvent for OrderPlaced {
    const NAME: &'static str = "orders.order_placed";

    fn descriptor() -> &'static EventDescriptor {
        unimplemented!()
    }
}

fn main() {}

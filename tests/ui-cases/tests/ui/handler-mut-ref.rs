use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler]
fn on_order(event: &mut OrderPlaced) {
    event.id += 1;
}

fn main() {}

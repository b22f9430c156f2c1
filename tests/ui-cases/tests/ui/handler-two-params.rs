use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler]
fn on_order(event: &OrderPlaced, count: u32) {
    println!("{} {count}", event.id);
}

fn main() {}

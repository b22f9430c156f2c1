use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler(time_limit_ms = 0)]
fn on_order(event: &OrderPlaced) {
    println!("{}", event.id);
}

fn main() {}

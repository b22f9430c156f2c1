use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler]
fn keep_it(event: &'static OrderPlaced) {
    println!("{}", event.id);
}

fn main() {}

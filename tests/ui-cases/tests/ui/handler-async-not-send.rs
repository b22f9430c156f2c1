use std::rc::Rc;

use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

async fn later() {}

#[handler]
async fn on_order(event: &OrderPlaced) {
    let count = Rc::new(event.id);
    later().await;
    println!("{count}");
}

fn main() {}

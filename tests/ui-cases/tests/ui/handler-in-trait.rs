use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

trait Notify {
    #[handler]
    fn on_order(event: &OrderPlaced) {
        println!("{}", event.id);
    }
}

fn main() {}

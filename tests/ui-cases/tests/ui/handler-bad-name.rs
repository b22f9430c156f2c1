use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler(name = "send email")]
fn on_order(event: &OrderPlaced) {
    println!("{}", event.id);
}

#[handler(name = "")]
fn on_order_again(event: &OrderPlaced) {
    println!("{}", event.id);
}

#[handler(name = send_email)]
fn on_order_once_more(event: &OrderPlaced) {
    println!("{}", event.id);
}

fn main() {}

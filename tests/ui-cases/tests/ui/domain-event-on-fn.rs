use events_core::domain_event;

#[domain_event]
fn order_placed() {}

fn main() {
    order_placed();
}

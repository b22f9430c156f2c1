use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

struct Failure;

#[handler]
fn on_order(event: &OrderPlaced) -> Result<(), Failure> {
    if event.id == 0 { Err(Failure) } else { Ok(()) }
}

fn main() {}

use std::cell::Cell;

use events_core::domain_event;

#[domain_event]
struct OrderPlaced {
    attempts: Cell<u32>,
}

fn main() {
    let _ = OrderPlaced {
        attempts: Cell::new(0),
    }
    .attempts;
}

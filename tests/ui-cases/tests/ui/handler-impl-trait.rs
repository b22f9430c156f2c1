use events_core::{DomainEvent, handler};

#[handler]
fn on_any(event: &impl DomainEvent) {
    let _ = event;
}

fn main() {}

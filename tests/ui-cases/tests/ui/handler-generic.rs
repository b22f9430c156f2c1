use events_core::{DomainEvent, handler};

#[handler]
fn on_any<E: DomainEvent>(event: &E) {
    println!("{}", E::NAME);
    let _ = event;
}

fn main() {}

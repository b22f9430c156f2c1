use events_core::handler;

#[handler]
fn on_nothing() {}

fn main() {}

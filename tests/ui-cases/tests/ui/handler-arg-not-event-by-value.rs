use events_core::handler;

#[derive(Clone)]
struct NotAnEvent {
    id: u32,
}

#[handler]
fn on_plain(event: NotAnEvent) {
    println!("{}", event.id);
}

fn main() {}

use events_core::handler;

struct NotAnEvent {
    id: u32,
}

#[handler]
fn on_string(event: &String) {
    println!("{event}");
}

#[handler]
fn on_plain(event: &NotAnEvent) {
    println!("{}", event.id);
}

fn main() {}

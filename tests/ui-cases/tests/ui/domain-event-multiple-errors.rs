use events_core::domain_event;

#[domain_event(nmae = "a", name = "", crate = events_core, name = "b", naem = "c")]
struct OrderPlaced {
    id: u32,
}

fn main() {}

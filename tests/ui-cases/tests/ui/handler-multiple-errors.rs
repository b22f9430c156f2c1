use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler(nmae = "x", time_limit_ms = 0, max_retries = 1, max_retries = 2)]
unsafe fn on_order<T>(event: &mut OrderPlaced, extra: T) {
    event.id += 1;
    let _ = extra;
}

fn main() {}

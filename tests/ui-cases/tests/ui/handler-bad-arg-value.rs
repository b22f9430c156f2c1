use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler(name)]
fn missing_value(_: &OrderPlaced) {}

#[handler(max_retries = -1)]
fn negative(_: &OrderPlaced) {}

#[handler(max_retries = "3")]
fn quoted(_: &OrderPlaced) {}

#[handler(max_retries = 5000000000)]
fn too_large(_: &OrderPlaced) {}

#[handler(time_limit_ms = 1.5)]
fn fractional(_: &OrderPlaced) {}

#[handler(crate = "events_core")]
fn crate_as_string(_: &OrderPlaced) {}

#[handler(name = "a",, max_retries = 1)]
fn double_comma(_: &OrderPlaced) {}

fn main() {}

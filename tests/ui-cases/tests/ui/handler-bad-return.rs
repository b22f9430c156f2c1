use events_core::{domain_event, handler};

#[domain_event]
struct OrderPlaced {
    id: u32,
}

#[handler]
fn count(event: &OrderPlaced) -> i32 {
    event.id as i32
}

#[handler]
fn count_or_fail(event: &OrderPlaced) -> Result<i32, std::io::Error> {
    Ok(event.id as i32)
}

#[handler]
async fn count_later(event: &OrderPlaced) -> i32 {
    event.id as i32
}

fn main() {}

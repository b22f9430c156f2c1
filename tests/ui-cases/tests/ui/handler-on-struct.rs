use events_core::handler;

#[handler]
struct OnOrder {
    id: u32,
}

#[handler]
const ON_ORDER: u32 = 1;

fn main() {
    let _ = OnOrder { id: ON_ORDER }.id;
}

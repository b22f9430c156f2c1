use events_core::domain_event;

#[domain_event]
struct OrderPlaced {
    id: u32,
    note: &'static str,
}

#[domain_event]
enum StockChanged {
    Restocked { sku: Option<&'static [u8]> },
    SoldOut(String),
}

fn main() {}

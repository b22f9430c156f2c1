//! Every shape of type `#[domain_event]` accepts, with its default or given name.

use events_core::{DomainEvent, Registry, domain_event};

#[domain_event]
struct ProductCreated {
    product_id: String,
    stock: u32,
}

#[domain_event]
struct PriceChanged(String, u64);

#[domain_event]
struct HTTPRequestSent;

#[domain_event]
enum StockLevel {
    Empty,
    Low { left: u32 },
    Plenty(u32),
}

#[domain_event(name = "orders.order_placed")]
struct OrderPlaced {
    order_id: u64,
}

fn main() {
    assert_eq!(ProductCreated::NAME, "product_created");
    assert_eq!(PriceChanged::NAME, "price_changed");
    assert_eq!(HTTPRequestSent::NAME, "http_request_sent");
    assert_eq!(StockLevel::NAME, "stock_level");
    assert_eq!(OrderPlaced::NAME, "orders.order_placed");

    let registry = Registry::collected().unwrap();
    let names: Vec<&str> = registry.events().map(|e| e.name()).collect();
    assert_eq!(
        names,
        [
            "http_request_sent",
            "orders.order_placed",
            "price_changed",
            "product_created",
            "stock_level",
        ]
    );

    let event = ProductCreated {
        product_id: "abc".into(),
        stock: 4,
    };
    let json = registry
        .event("product_created")
        .unwrap()
        .encode_value(&event)
        .unwrap()
        .unwrap();
    assert_eq!(json.to_string(), r#"{"product_id":"abc","stock":4}"#);
    let _ = (event.product_id, event.stock);
    let _ = PriceChanged("p".into(), 1);
    let _ = (
        StockLevel::Empty,
        StockLevel::Low { left: 1 },
        StockLevel::Plenty(2),
    );
    let _ = OrderPlaced { order_id: 1 }.order_id;
}

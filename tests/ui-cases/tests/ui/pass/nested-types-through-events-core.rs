//! Types inside an event derive serde's traits through `events_core::serde`.

use events_core::{DomainEvent, domain_event};

#[derive(events_core::serde::Serialize, events_core::serde::Deserialize, Debug, PartialEq)]
#[serde(crate = "events_core::serde")]
enum Currency {
    Eur,
    Usd,
}

#[derive(events_core::serde::Serialize, events_core::serde::Deserialize, Debug, PartialEq)]
#[serde(crate = "events_core::serde")]
struct Customer {
    name: String,
}

#[domain_event(name = "orders.order_placed")]
#[derive(Debug, PartialEq)]
struct OrderPlaced {
    currency: Currency,
    #[serde(flatten)]
    customer: Customer,
    // Owned data with a lifetime in its type is fine.
    note: std::borrow::Cow<'static, str>,
}

fn main() {
    let event = OrderPlaced {
        currency: Currency::Usd,
        customer: Customer { name: "ada".into() },
        note: "gift".into(),
    };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(json, r#"{"currency":"Usd","name":"ada","note":"gift"}"#);
    assert_eq!(serde_json::from_str::<OrderPlaced>(&json).unwrap(), event);
    assert_eq!(OrderPlaced::NAME, "orders.order_placed");
}

//! A user who derives serde's traits themselves (with their own serde attributes) keeps them.

use events_core::{DomainEvent, domain_event};
use serde::{Deserialize, Serialize};

#[domain_event]
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ProductCreated {
    product_id: String,
}

#[domain_event]
#[derive(serde::Serialize)]
struct OnlySerialize {
    #[serde(rename = "n")]
    number: u32,
}

fn main() {
    assert_eq!(ProductCreated::NAME, "product_created");
    let event = ProductCreated {
        product_id: "abc".into(),
    };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(json, r#"{"productId":"abc"}"#);
    assert_eq!(
        serde_json::from_str::<ProductCreated>(&json).unwrap(),
        event
    );
    let json = serde_json::to_string(&OnlySerialize { number: 1 }).unwrap();
    assert_eq!(json, r#"{"n":1}"#);
    assert_eq!(OnlySerialize::NAME, "only_serialize");
}

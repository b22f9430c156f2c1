//! Events shared by the examples: the Celery publisher sends them, the Celery worker (Rust or
//! Python, `examples/python/domain_events_app.py`) runs their handlers.

pub mod logging;

pub mod shop {
    //! A shop's domain events.

    use events_core::domain_event;

    /// A product was added to the catalogue.
    #[domain_event(name = "products.product_created")]
    #[derive(Debug, Clone)]
    pub struct ProductCreated {
        /// The product.
        pub product_id: String,
        /// Its name.
        pub name: String,
        /// How many are in stock.
        pub stock: u32,
    }

    /// One line of an order.
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct OrderLine {
        /// The product.
        pub product_id: String,
        /// How many.
        pub quantity: u32,
        /// The price of one, in cents.
        pub unit_price_cents: u64,
    }

    /// An order was placed.
    #[domain_event(name = "orders.order_placed")]
    #[derive(Debug, Clone)]
    pub struct OrderPlaced {
        /// The order.
        pub order_id: u64,
        /// Who placed it.
        pub customer: String,
        /// What was ordered.
        pub lines: Vec<OrderLine>,
        /// A coupon code, if any.
        pub coupon: Option<String>,
    }

    /// An order was cancelled.
    #[domain_event(name = "orders.order_cancelled")]
    #[derive(Debug, Clone)]
    pub enum OrderCancelled {
        /// The customer cancelled it.
        ByCustomer {
            /// The order.
            order_id: u64,
            /// Why.
            reason: String,
        },
        /// A product ran out.
        OutOfStock(u64),
    }
}

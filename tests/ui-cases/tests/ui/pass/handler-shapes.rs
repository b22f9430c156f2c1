//! Every handler signature `#[handler]` accepts, and its arguments.

use std::error::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use events_core::{EventBus, MemoryBackend, Registry, domain_event, handler};

static SEEN: AtomicU32 = AtomicU32::new(0);

#[domain_event]
#[derive(Clone)]
struct ProductCreated {
    stock: u32,
}

#[handler]
fn by_reference(event: &ProductCreated) {
    SEEN.fetch_add(event.stock, Ordering::SeqCst);
}

#[handler]
fn by_value(event: ProductCreated) {
    SEEN.fetch_add(event.stock * 10, Ordering::SeqCst);
}

#[handler]
fn io_result(_: &ProductCreated) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler]
fn boxed_result(_: &ProductCreated) -> Result<(), Box<dyn Error + Send + Sync>> {
    Ok(())
}

#[handler]
async fn asynchronous(_: &ProductCreated) {}

#[handler]
async fn asynchronous_by_value(_: ProductCreated) -> Result<(), std::io::Error> {
    Ok(())
}

#[handler(name = "products.restock", max_retries = 3, time_limit_ms = 500)]
fn with_options(_: &ProductCreated) {}

mod nested {
    use super::ProductCreated;
    use events_core::handler;

    #[handler]
    pub(crate) fn in_a_module(_: &ProductCreated) {}
}

fn main() {
    #[handler]
    fn in_a_fn_body(_: &ProductCreated) {}

    let registry = Registry::collected().unwrap();
    let handlers = registry.handlers_of("product_created");
    let mut names: Vec<&str> = handlers.iter().map(|h| h.name()).collect();
    names.sort_unstable();
    // Default names are the function's path; the test crate's name is chosen by trybuild.
    let krate = module_path!();
    let mut expected: Vec<String> = [
        "asynchronous",
        "asynchronous_by_value",
        "boxed_result",
        "by_reference",
        "by_value",
        "in_a_fn_body",
        "io_result",
        "nested::in_a_module",
    ]
    .iter()
    .map(|f| format!("{krate}::{f}"))
    .chain(["products.restock".to_owned()])
    .collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let options = handlers
        .iter()
        .find(|h| h.name() == "products.restock")
        .unwrap()
        .options();
    assert_eq!(options.max_retries, Some(3));
    assert_eq!(options.time_limit, Some(Duration::from_millis(500)));
    assert!(
        handlers
            .iter()
            .find(|h| h.name().ends_with("::asynchronous"))
            .unwrap()
            .is_async()
    );
    assert!(
        !handlers
            .iter()
            .find(|h| h.name().ends_with("::by_value"))
            .unwrap()
            .is_async()
    );

    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    pollster::block_on(bus.publish(&ProductCreated { stock: 2 })).unwrap();
    assert_eq!(SEEN.load(Ordering::SeqCst), 22);
}

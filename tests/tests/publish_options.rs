//! `PublishOptions` and `Backend::publish_with`: the default implementation (task id ignored,
//! any other option refused by name), the memory backend's (due events run, expired ones are
//! skipped, a future eta is refused), and the Celery backend's on Redis (task id, priority and
//! a queue other than the route's).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use events_core::{
    Backend, BackendKind, BoxFuture, EventBus, EventRef, Handler, MemoryBackend, PublishOptions,
    Receipt,
};

#[events_core::domain_event(name = "options_test.ping")]
struct Ping;

/// A backend that implements only `publish`.
struct Plain;

impl Backend for Plain {
    fn kind(&self) -> BackendKind {
        BackendKind::MEMORY
    }
    fn subscribe(&self, _: Handler) -> Result<(), events_core::Error> {
        Ok(())
    }
    fn publish<'a>(
        &'a self,
        e: EventRef<'a>,
    ) -> BoxFuture<'a, Result<Receipt, events_core::Error>> {
        Box::pin(std::future::ready(Ok(Receipt::Handled {
            event: e.name(),
            handlers: 7,
        })))
    }
    fn publish_blocking(&self, _: EventRef<'_>) -> Result<Receipt, events_core::Error> {
        unreachable!()
    }
}

#[test]
fn the_default_ignores_the_task_id_and_refuses_the_rest_by_name() {
    let event = Ping;
    let ping = EventRef::new(&event);
    let with_id = PublishOptions::new().task_id("x");
    let receipt = pollster::block_on(Plain.publish_with(ping, &with_id)).unwrap();
    assert!(matches!(receipt, Receipt::Handled { handlers: 7, .. }));
    for (options, name) in [
        (PublishOptions::new().priority(3), "priority"),
        (PublishOptions::new().queue("q"), "queue"),
        (PublishOptions::new().delay(Duration::from_secs(1)), "eta"),
        (
            PublishOptions::new().expires_in(Duration::from_secs(1)),
            "expires",
        ),
    ] {
        let err = pollster::block_on(Plain.publish_with(ping, &options)).unwrap_err();
        assert!(
            matches!(err, events_core::Error::UnsupportedOption { option, .. } if option == name),
            "{err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn memory_runs_due_events_skips_expired_ones_and_refuses_future_etas() {
    let bus = EventBus::builder(MemoryBackend::new())
        .collected_handlers(false)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    bus.subscribe(move |_: &Ping| {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let event = Ping;
    let publish = |options: PublishOptions| {
        pollster::block_on(bus.backend().publish_with(EventRef::new(&event), &options))
    };
    let due = PublishOptions::new()
        .task_id("id")
        .priority(9)
        .queue("q")
        .eta(SystemTime::now() - Duration::from_secs(1));
    assert!(publish(due).is_ok());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let expired = PublishOptions::new().expires_at(SystemTime::now() - Duration::from_secs(1));
    let receipt = publish(expired).unwrap();
    assert!(matches!(receipt, Receipt::Handled { handlers: 0, .. }));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "an expired event ran");
    let later = PublishOptions::new().delay(Duration::from_secs(60));
    let err = publish(later).unwrap_err();
    assert!(matches!(
        err,
        events_core::Error::UnsupportedOption { option: "eta", .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn celery_honours_task_id_priority_and_queue() {
    let routed = tests::unique_queue("options_routed");
    let other = tests::unique_queue("options_other");
    let config = events_celery::CeleryConfig::new(&tests::redis_url())
        .unwrap()
        .default_queue(routed.clone());
    let backend = events_celery::CeleryBackend::new(config).unwrap();
    let event = Ping;
    let options = PublishOptions::new()
        .task_id("5b0f4a9e-0000-4000-8000-000000000001")
        .priority(0)
        .queue(other.clone())
        .expires_in(std::time::Duration::from_secs(600));
    let receipt = Backend::publish_with(&backend, EventRef::new(&event), &options)
        .await
        .unwrap();
    assert!(
        matches!(&receipt, Receipt::Enqueued { task_id, queue, .. }
            if task_id == "5b0f4a9e-0000-4000-8000-000000000001" && *queue == other),
        "{receipt:?}"
    );
    let mut redis = tests::redis().await;
    let envelope: Option<String> = redis::cmd("RPOP")
        .arg(&other)
        .query_async(&mut redis)
        .await
        .unwrap();
    let envelope = envelope.expect("the message went to the queue of the options");
    let message = events_celery::TaskMessage::decode_redis(
        envelope.as_bytes(),
        &events_celery::DecodeOptions::new(),
    )
    .unwrap();
    assert_eq!(message.id, "5b0f4a9e-0000-4000-8000-000000000001");
    assert!(message.headers.expires.is_some());
    let routed_len: u64 = redis::cmd("LLEN")
        .arg(&routed)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(routed_len, 0, "the route's queue got it too");
    tests::cleanup_redis_queue(&other, &[]).await;
}

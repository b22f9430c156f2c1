//! The Celery backend puts exactly the messages the codec writes onto real brokers, confirmed,
//! and fails — within its time limit — when the broker cannot be reached.

use std::time::{Duration, Instant};

use events_celery::codec::{AmqpMessage, DecodeOptions, TaskMessage};
use events_celery::{CeleryBackend, CeleryConfig, CeleryError, DeliveryMode, Route};
use events_core::{Backend, Error, EventBus, EventRef, Receipt, domain_event};
use lapin::options::BasicGetOptions;
use redis::AsyncCommands;
use tests::{amqp_channel, amqp_url, delete_amqp_queue, redis, redis_url, unique_queue};

#[domain_event(name = "publish.parcel_shipped")]
#[derive(Debug, Clone, PartialEq)]
struct ParcelShipped {
    parcel: String,
    weight_grams: u64,
    tags: Vec<String>,
}

fn parcel() -> ParcelShipped {
    ParcelShipped {
        parcel: "PX-9 — Łódź".into(),
        weight_grams: 1250,
        tags: vec!["fragile".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_lpushes_kombus_envelope_with_bindings() {
    let queue = unique_queue("publish_redis");
    let backend = CeleryBackend::connect(
        CeleryConfig::new(&redis_url())
            .unwrap()
            .default_queue(queue.clone()),
    )
    .await
    .unwrap();
    let receipt = backend.publish(&parcel()).await.unwrap();
    let Receipt::Enqueued {
        task_id,
        queue: sent_to,
        ..
    } = receipt
    else {
        panic!("expected an enqueued receipt, got {receipt:?}");
    };
    assert_eq!(sent_to, queue);

    let mut redis = redis().await;
    let raw: Vec<u8> = redis.rpop(&queue, None).await.unwrap();
    let message = TaskMessage::decode_redis(&raw, &DecodeOptions::new()).unwrap();
    assert_eq!(message.task, "domain_events.publish.parcel_shipped");
    assert_eq!(message.id, task_id);
    assert_eq!(message.payload::<ParcelShipped>().unwrap(), parcel());
    let binding: Vec<String> = redis
        .smembers(format!("_kombu.binding.{queue}"))
        .await
        .unwrap();
    assert_eq!(binding, [format!("{queue}\x06\x16\x06\x16{queue}")]);

    // Priorities go to kombu's priority lists.
    backend
        .publish_with(&parcel(), |o| o.priority(7))
        .await
        .unwrap();
    let len: usize = redis.llen(format!("{queue}\x06\x166")).await.unwrap();
    assert_eq!(len, 1);
    let _: () = redis
        .del(&[
            format!("{queue}\x06\x166"),
            format!("_kombu.binding.{queue}"),
            format!("_kombu.binding_permanent.{queue}"),
        ])
        .await
        .unwrap();
}

/// Publishes `parcel()` through a backend routing it to `queue` as `route` says, takes the
/// message off RabbitMQ and decodes it: the receipt, the broker's properties, the message.
async fn publish_and_take(
    queue: &str,
    route: Route,
) -> (Receipt, lapin::BasicProperties, TaskMessage) {
    let config = CeleryConfig::new(&amqp_url())
        .unwrap()
        .route("publish.parcel_shipped", route);
    let bus = EventBus::new(CeleryBackend::new(config).unwrap()).unwrap();
    let receipt = bus.publish(&parcel()).await.unwrap();
    let (_connection, channel) = amqp_channel().await;
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the confirmed message is in the queue");
    let properties = message.delivery.properties.clone();
    let decoded = TaskMessage::decode_amqp(
        &AmqpMessage::from_lapin("", queue, &properties, message.delivery.data.clone()),
        &DecodeOptions::new(),
    )
    .unwrap();
    delete_amqp_queue(&channel, queue).await;
    (receipt, properties, decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_is_confirmed_into_a_durable_queue() {
    let queue = unique_queue("publish_amqp");
    let (receipt, props, decoded) = publish_and_take(&queue, Route::queue(queue.clone())).await;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(decoded.payload::<ParcelShipped>().unwrap(), parcel());
    assert!(matches!(receipt, Receipt::Enqueued { ref task_id, .. } if *task_id == decoded.id));
}

/// Celery's `task_default_delivery_mode = "transient"`, per event: the broker holds the message
/// with `delivery_mode = 1`, everything else as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_transient_route_publishes_delivery_mode_1() {
    let queue = unique_queue("publish_amqp_transient");
    let route = Route::queue(queue.clone()).delivery_mode(DeliveryMode::Transient);
    let (_, props, decoded) = publish_and_take(&queue, route).await;
    assert_eq!(*props.delivery_mode(), Some(1));
    assert_eq!(decoded.payload::<ParcelShipped>().unwrap(), parcel());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_error_not_a_loss_or_a_hang() {
    for url in [
        "amqp://guest:s3cret@127.0.0.1:1//",
        "redis://:s3cret@127.0.0.1:1/0",
    ] {
        let config = CeleryConfig::new(url)
            .unwrap()
            .publish_timeout(Duration::from_secs(2));
        let backend = CeleryBackend::new(config.clone()).unwrap();
        let started = Instant::now();
        // Through the `Backend` trait, as the bus publishes (the inherent `publish` takes the
        // event itself and returns `CeleryError`).
        let err = Backend::publish(&backend, EventRef::new(&parcel()))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url}: publish hung"
        );
        let message = format!("{err} {err:?}");
        assert!(
            matches!(
                err,
                Error::Backend {
                    backend: "celery",
                    ..
                }
            ),
            "{message}"
        );
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(!message.contains("s3cret"), "password leaked: {message}");

        // Failing fast at start-up is available too, and the blocking path reports the same.
        let err = CeleryBackend::connect(config).await.unwrap_err();
        assert!(
            matches!(
                err,
                CeleryError::Connect { .. } | CeleryError::Timeout { .. }
            ),
            "{err}"
        );
        let err = tokio::task::spawn_blocking(move || {
            Backend::publish_blocking(&backend, EventRef::new(&parcel()))
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(!format!("{err:?}").contains("s3cret"));
    }
}

#[test]
fn init_from_a_broker_url_builds_the_celery_backend() {
    let bus = events_core::EventBus::builder_boxed(
        events_core::backend_from_config("redis://:pw@127.0.0.1:6379/0").unwrap(),
    )
    .build()
    .unwrap();
    assert_eq!(
        bus.backend().describe(),
        "celery (redis://:***@127.0.0.1:6379/0)"
    );
    assert_eq!(bus.backend().kind(), events_celery::CeleryBackend::KIND);
    // Registered through the public registry, under its schemes.
    let celery = events_core::backends::find("AMQPS://h/v").unwrap();
    assert_eq!((celery.name(), celery.krate()), ("celery", "events_celery"));
    assert_eq!(celery.schemes(), ["amqp", "amqps", "redis", "rediss"]);
    let err = events_core::backend_from_config("celery");
    // `celery` alone takes the URL from CELERY_BROKER_URL, which the tests do not set.
    if std::env::var("CELERY_BROKER_URL").is_err() {
        let message = err.err().unwrap().to_string();
        assert!(message.contains("CELERY_BROKER_URL"), "{message}");
    }
}

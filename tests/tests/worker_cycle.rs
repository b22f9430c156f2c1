//! A handler that publishes, through the Celery backend, the event it handles — or a cycle of
//! handlers publishing each other's events — loops through the broker, one new message per
//! round, never a nested call. The worker bounds it as the in-memory backend bounds nested
//! publishes: each message carries how many publishes deep it is (`x-events-depth`) and the
//! events on the way (`x-events-chain`); at `MAX_PUBLISH_DEPTH` (64) it is dead-lettered
//! naming the cycle. Real brokers, a real worker.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use events_celery::{CeleryBackend, CeleryConfig, WorkerConfig};
use events_core::{MAX_PUBLISH_DEPTH, domain_event, handler};
use tests::fault::dead_letter_reasons;
use tests::{InProcessWorker, amqp_url, cleanup_amqp_queue, eventually, redis_url, unique_queue};

/// The backend the handlers publish with, by broker (`amqp`/`redis`).
static BACKENDS: Mutex<Vec<(String, CeleryBackend)>> = Mutex::new(Vec::new());
/// Handler runs, by run id.
static RUNS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();

fn runs() -> &'static Mutex<HashMap<String, u32>> {
    RUNS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn backend(broker: &str) -> CeleryBackend {
    let backends = BACKENDS.lock().unwrap();
    backends
        .iter()
        .find(|(b, _)| b == broker)
        .map(|(_, backend)| backend.clone())
        .expect("the test registered its backend")
}

/// Publishes itself again: a cycle of one.
#[domain_event(name = "cycle.echo")]
#[derive(Debug, Clone)]
struct Echo {
    broker: String,
    run: String,
}

#[handler]
async fn echo_again(event: &Echo) -> Result<(), events_celery::CeleryError> {
    *runs().lock().unwrap().entry(event.run.clone()).or_default() += 1;
    backend(&event.broker).publish(event).await?;
    Ok(())
}

/// Ping publishes Pong, Pong publishes Ping (the sync one blocking, on the blocking pool).
#[domain_event(name = "cycle.ping")]
#[derive(Debug, Clone)]
struct Ping {
    broker: String,
    run: String,
}

#[domain_event(name = "cycle.pong")]
#[derive(Debug, Clone)]
struct Pong {
    broker: String,
    run: String,
}

#[handler]
async fn ping_answers(event: &Ping) -> Result<(), events_celery::CeleryError> {
    *runs().lock().unwrap().entry(event.run.clone()).or_default() += 1;
    let pong = Pong {
        broker: event.broker.clone(),
        run: event.run.clone(),
    };
    backend(&event.broker).publish(&pong).await?;
    Ok(())
}

#[handler]
fn pong_answers(event: &Pong) -> Result<(), events_celery::CeleryError> {
    *runs().lock().unwrap().entry(event.run.clone()).or_default() += 1;
    let ping = Ping {
        broker: event.broker.clone(),
        run: event.run.clone(),
    };
    backend(&event.broker).publish_blocking(&ping)?;
    Ok(())
}

async fn cycles_stop_at_the_limit(broker: &str, url: &str) {
    let queue = unique_queue("worker_cycle");
    let config = CeleryConfig::new(url).unwrap().default_queue(&queue);
    let publisher = CeleryBackend::connect(config.clone()).await.unwrap();
    BACKENDS
        .lock()
        .unwrap()
        .push((broker.to_owned(), publisher.clone()));
    let worker = InProcessWorker::start(WorkerConfig::from_celery(&config).concurrency(2));
    let (echo_run, ping_run) = (format!("{queue}-echo"), format!("{queue}-ping"));
    publisher
        .publish(&Echo {
            broker: broker.to_owned(),
            run: echo_run.clone(),
        })
        .await
        .unwrap();
    publisher
        .publish(&Ping {
            broker: broker.to_owned(),
            run: ping_run.clone(),
        })
        .await
        .unwrap();
    let reasons = eventually(Duration::from_secs(60), || async {
        dead_letter_reasons(url, &queue)
            .await
            .filter(|reasons| reasons.len() >= 2)
    })
    .await
    .unwrap_or_else(|| panic!("{broker}: the cycles were not stopped"));
    // Nothing runs after its dead letter: the counts stay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = runs().lock().unwrap().clone();
    worker.stop().await;
    assert_eq!(reasons.len(), 2, "{broker}: {reasons:#?}");
    // The first message is published from outside any handler (depth 0); the one published
    // 64 deep is refused: 64 runs each.
    assert_eq!(
        counted.get(&echo_run),
        Some(&(MAX_PUBLISH_DEPTH as u32)),
        "{broker}"
    );
    assert_eq!(
        counted.get(&ping_run),
        Some(&(MAX_PUBLISH_DEPTH as u32)),
        "{broker}"
    );
    let echo = reasons
        .iter()
        .find(|r| r.contains("cycle.echo -> cycle.echo"))
        .unwrap_or_else(|| panic!("{broker}: no echo cycle named in {reasons:#?}"));
    assert!(
        echo.contains("publish cycle") && echo.contains("64 publishes deep"),
        "{echo}"
    );
    let ping = reasons
        .iter()
        .find(|r| r.contains("cycle.ping -> cycle.pong -> cycle.ping"))
        .unwrap_or_else(|| panic!("{broker}: no ping/pong cycle named in {reasons:#?}"));
    assert!(ping.contains("must not publish"), "{ping}");
    if broker == "amqp" {
        cleanup_amqp_queue(&queue).await;
        cleanup_amqp_queue(&format!("{queue}.dead_letter")).await;
    } else {
        tests::fault::cleanup_redis_queue_at(url, &queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_cycles_stop_at_the_limit() {
    cycles_stop_at_the_limit("redis", &redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_cycles_stop_at_the_limit() {
    cycles_stop_at_the_limit("amqp", &amqp_url()).await;
}

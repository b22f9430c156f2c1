//! Tests of the plane and results observers, in process on an in-memory broker: which
//! `WorkerEvent`s become which Celery events and result writes, in which messages, what is
//! counted when the queue is full or the broker fails, that finishing flushes what is queued,
//! and that it returns in bounded time when the broker hangs (on tokio's paused clock).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use events_core::{FailureCause, Handler, HandlerFailure, domain_event};
use tokio::sync::watch;
use tokio::time::Instant;

use super::plane::{CLOSE_LIMIT, Plane, PlaneObserver, PlaneTasks};
use super::results::Results;
use crate::broker::control::testing::{Behaviour, MemoryBroker};
use crate::broker::control::{ControlLink, ResultStore};
use crate::codec::{EncodeOptions, Json, PreparedMessage, TaskMessage};
use crate::worker::WorkerConfig;
use crate::worker::events::{HandlerFailed, WorkerEvent, WorkerObserver, WorkerStats};

#[domain_event(name = "control_observer_tests.work")]
struct Work {
    n: u32,
}

/// Longer than any bounded shutdown: reaching it means finishing hung.
const HUNG: Duration = Duration::from_secs(600);

fn task(id: &str) -> TaskMessage {
    let options = EncodeOptions::new().task_id(id);
    TaskMessage::from_payload(
        "control_observer_tests.work",
        serde_json::json!({"n": 1}),
        &options,
    )
    .unwrap()
}

fn failure(will_retry: bool) -> HandlerFailed {
    let handler = Handler::sync::<Work, _, _>("tests::work", |work: &Work| {
        std::hint::black_box(work.n);
    });
    HandlerFailed {
        failure: HandlerFailure::new(
            &handler,
            FailureCause::Error(std::io::Error::other("boom").into()),
        ),
        will_retry,
    }
}

fn config(task_events: bool, capacity: usize) -> WorkerConfig {
    WorkerConfig::new("redis://127.0.0.1:6379/0")
        .unwrap()
        .hostname("observer@test")
        .worker_events(true)
        .task_events(task_events)
        .remote_control(false)
        .event_queue_capacity(capacity)
}

struct Running {
    plane: Arc<Plane>,
    observer: PlaneObserver,
    tasks: PlaneTasks,
    stats: Arc<WorkerStats>,
    broker: Arc<MemoryBroker>,
}

fn start_plane(config: &WorkerConfig) -> Running {
    let broker = Arc::new(MemoryBroker::default());
    let stats = Arc::new(WorkerStats::default());
    let (stop, _) = watch::channel(false);
    let (plane, tasks) = Plane::start_with(
        config,
        ControlLink::Memory(Arc::clone(&broker)),
        Vec::new(),
        crate::broker::queues::QueueSet::new(&config.broker, &config.queues),
        Arc::clone(&stats),
        Arc::new(stop),
    );
    Running {
        observer: PlaneObserver(Arc::clone(&plane)),
        plane,
        tasks,
        stats,
        broker,
    }
}

fn started(task: &TaskMessage) -> WorkerEvent<'_> {
    WorkerEvent::Started {
        task,
        queue: "q",
        at: SystemTime::now(),
        handlers: &[],
    }
}

/// The events of the published messages, in order (a `task.multi` list flattened).
fn events(messages: &[PreparedMessage]) -> Vec<Json> {
    let mut out = Vec::new();
    for message in messages {
        assert_eq!(message.exchange, "celeryev");
        assert_eq!(message.headers["hostname"].as_str(), Some("observer@test"));
        match Json::parse(&message.body_json).unwrap() {
            Json::Array(items) => {
                assert_eq!(message.routing_key, "task.multi");
                out.extend(items);
            }
            event => {
                let kind = event["type"].as_str().unwrap().replace('-', ".");
                assert_eq!(message.routing_key, kind);
                out.push(event);
            }
        }
    }
    out
}

fn types(events: &[Json]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn worker_events_become_celerys_events_in_their_order() {
    let run = start_plane(&config(true, 1024));
    let (ok, failed, expired, revoked) = (task("ok"), task("failed"), task("exp"), task("rev"));
    let at = SystemTime::now();
    let queues = ["q".to_owned()];
    let failures = [failure(false), failure(true)];
    let retrying = [failure(true)];
    let handlers = ["tests::work".to_owned()];
    for event in [
        WorkerEvent::Online {
            hostname: "observer@test",
            queues: &queues,
        },
        WorkerEvent::Received {
            task: &ok,
            queue: "q",
            at,
        },
        WorkerEvent::Started {
            task: &ok,
            queue: "q",
            at,
            handlers: &[],
        },
        WorkerEvent::Succeeded {
            task: &ok,
            queue: "q",
            runtime: Duration::from_millis(1500),
        },
        WorkerEvent::Failed {
            task: &failed,
            queue: "q",
            runtime: Duration::ZERO,
            failures: &failures,
        },
        // Only retries left: no `task-failed`.
        WorkerEvent::Failed {
            task: &failed,
            queue: "q",
            runtime: Duration::ZERO,
            failures: &retrying,
        },
        WorkerEvent::Retried {
            task: &failed,
            queue: "q",
            retry: &failed,
            handlers: &handlers,
            delay: Duration::from_secs(1),
        },
        WorkerEvent::Rejected {
            task: Some(&failed),
            queue: "q",
            reason: "bad",
            handler: None,
        },
        // One handler out of retries: the message's `task-failed` told it already.
        WorkerEvent::Rejected {
            task: Some(&failed),
            queue: "q",
            reason: "out of retries",
            handler: Some("tests::work"),
        },
        WorkerEvent::Expired {
            task: &expired,
            queue: "q",
        },
        WorkerEvent::Revoked {
            task: &revoked,
            queue: "q",
        },
        WorkerEvent::Connected,
        WorkerEvent::Heartbeat {
            hostname: "observer@test",
            processed: 2,
        },
        WorkerEvent::Offline {
            hostname: "observer@test",
        },
    ] {
        run.observer.on_event(&event);
    }
    run.plane.finish(run.tasks).await;
    let published = run.broker.published.lock().unwrap().clone();
    // One round (the publisher had not run yet): the task events between two worker events
    // are one `task.multi` message, and the order is kept.
    let keys: Vec<&str> = published.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "worker.online",
            "task.multi",
            "worker.heartbeat",
            "worker.offline"
        ]
    );
    let events = events(&published);
    assert_eq!(
        types(&events),
        [
            "worker-online",
            "task-received",
            "task-started",
            "task-succeeded",
            "task-failed",
            "task-retried",
            "task-rejected",
            "task-revoked",
            "task-revoked",
            "worker-heartbeat",
            "worker-offline",
        ]
    );
    let clocks: Vec<u64> = events
        .iter()
        .map(|e| e["clock"].as_u64().unwrap())
        .collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "{clocks:?}");
    assert_eq!(events[1]["uuid"].as_str(), Some("ok"));
    assert_eq!(
        events[1]["name"].as_str(),
        Some("domain_events.control_observer_tests.work")
    );
    assert_eq!(events[3]["result"].as_str(), Some("None"));
    assert_eq!(events[3]["runtime"].as_f64(), Some(1.5));
    assert_eq!(events[4]["uuid"].as_str(), Some("failed"));
    assert_eq!(
        events[4]["exception"].as_str(),
        Some("HandlerFailed('tests::work: boom')")
    );
    assert_eq!(
        events[5]["exception"].as_str(),
        Some("Retry('handlers to retry: tests::work')")
    );
    assert_eq!(events[6]["requeue"], Json::Bool(false));
    assert_eq!(events[7]["uuid"].as_str(), Some("exp"));
    assert_eq!(events[7]["expired"], Json::Bool(true));
    assert_eq!(events[8]["uuid"].as_str(), Some("rev"));
    assert_eq!(events[8]["expired"], Json::Bool(false));
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn without_task_events_only_worker_events_go_out() {
    let run = start_plane(&config(false, 1024));
    let ok = task("ok");
    run.observer.on_event(&WorkerEvent::Online {
        hostname: "observer@test",
        queues: &[],
    });
    run.observer.on_event(&WorkerEvent::Received {
        task: &ok,
        queue: "q",
        at: SystemTime::now(),
    });
    run.observer.on_event(&WorkerEvent::Succeeded {
        task: &ok,
        queue: "q",
        runtime: Duration::ZERO,
    });
    run.observer.on_event(&WorkerEvent::Offline {
        hostname: "observer@test",
    });
    run.plane.finish(run.tasks).await;
    let events = events(&run.broker.published.lock().unwrap());
    assert_eq!(types(&events), ["worker-online", "worker-offline"]);
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_finishing_sends_the_rest() {
    let run = start_plane(&config(true, 16));
    let ok = task("ok");
    // The publisher has not run yet (one thread, no await so far): 16 fit, 4 do not.
    for _ in 0..20 {
        run.observer.on_event(&started(&ok));
    }
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 4);
    assert!(run.broker.published.lock().unwrap().is_empty());
    run.plane.finish(run.tasks).await;
    let events = events(&run.broker.published.lock().unwrap());
    assert_eq!(events.len(), 16, "finishing sends what was queued");
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_broker_gets_one_attempt_per_backoff_step() {
    let run = start_plane(&config(true, 1024));
    run.broker.set(Behaviour::Fail);
    let ok = task("ok");
    for _ in 0..50 {
        run.observer.on_event(&started(&ok));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.plane.finish(run.tasks).await;
    // In one second of backoff from 200 ms (at least half of each step, doubling): attempts
    // at 0, ≥ 0.1, ≥ 0.3, ≥ 0.7 s, and perhaps one for the flush — not one per event.
    let attempts = run.broker.attempts.load(Ordering::SeqCst);
    assert!((2..=5).contains(&attempts), "{attempts} attempts");
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 50);
}

#[tokio::test(start_paused = true)]
async fn finishing_is_bounded_when_the_broker_hangs() {
    let run = start_plane(&config(true, 1024));
    run.broker.set(Behaviour::Hang);
    let ok = task("ok");
    for _ in 0..10 {
        run.observer.on_event(&started(&ok));
    }
    // The publisher takes them and hangs; the last event waits behind them.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(run.broker.attempts.load(Ordering::SeqCst), 1);
    run.observer.on_event(&WorkerEvent::Offline {
        hostname: "observer@test",
    });
    let started = Instant::now();
    tokio::time::timeout(HUNG, run.plane.finish(run.tasks))
        .await
        .expect("Plane::finish returns even when the broker never answers");
    // The flush limit, then the publisher's end and the close, each bounded (paused clock:
    // exact).
    assert!(started.elapsed() <= Duration::from_secs(2) + 2 * CLOSE_LIMIT);
    assert_eq!(run.stats.events_dropped.load(Ordering::Relaxed), 11);
}

struct Writing {
    results: Results,
    writer: tokio::task::JoinHandle<()>,
    stats: Arc<WorkerStats>,
    broker: Arc<MemoryBroker>,
}

fn start_results(track_started: bool) -> Writing {
    let broker = Arc::new(MemoryBroker::default());
    let stats = Arc::new(WorkerStats::default());
    let (results, writer) = Results::start_with(
        ResultStore::Memory(Arc::clone(&broker)),
        track_started,
        "observer@test".to_owned(),
        1024,
        Arc::clone(&stats),
    );
    Writing {
        results,
        writer,
        stats,
        broker,
    }
}

fn succeeded(task: &TaskMessage) -> WorkerEvent<'_> {
    WorkerEvent::Succeeded {
        task,
        queue: "q",
        runtime: Duration::ZERO,
    }
}

#[tokio::test]
async fn results_follow_the_worker_events() {
    let run = start_results(true);
    let ok = task("ok");
    let failed = task("failed");
    let retrying = task("retrying");
    let rejected = task("rejected");
    let revoked = task("revoked");
    let expired = task("expired");
    let mut ignored = task("ignored");
    ignored.headers.ignore_result = Some(true);
    let failures = [failure(false), failure(true)];
    let retries = [failure(true)];
    for event in [
        WorkerEvent::Received {
            task: &ok,
            queue: "q",
            at: SystemTime::now(),
        },
        WorkerEvent::Started {
            task: &ok,
            queue: "q",
            at: SystemTime::now(),
            handlers: &[],
        },
        succeeded(&ok),
        WorkerEvent::Failed {
            task: &failed,
            queue: "q",
            runtime: Duration::ZERO,
            failures: &failures,
        },
        WorkerEvent::Failed {
            task: &retrying,
            queue: "q",
            runtime: Duration::ZERO,
            failures: &retries,
        },
        WorkerEvent::Rejected {
            task: Some(&rejected),
            queue: "q",
            reason: "not a task this worker knows",
            handler: None,
        },
        WorkerEvent::Rejected {
            task: Some(&failed),
            queue: "q",
            reason: "out of retries",
            handler: Some("tests::work"),
        },
        WorkerEvent::Revoked {
            task: &revoked,
            queue: "q",
        },
        WorkerEvent::Expired {
            task: &expired,
            queue: "q",
        },
        succeeded(&ignored),
    ] {
        run.results.on_event(&event);
    }
    run.results.finish(run.writer).await;
    let stored = run.broker.stored.lock().unwrap().clone();
    let outcomes: Vec<(String, String, Json)> = stored
        .iter()
        .map(|write| {
            let value = Json::parse(&write.value).unwrap();
            assert_eq!(
                write.key,
                format!("celery-task-meta-{}", value["task_id"].as_str().unwrap())
            );
            assert_eq!(write.expires_secs, 86_400);
            let status = value["status"].as_str().unwrap().to_owned();
            (value["task_id"].as_str().unwrap().to_owned(), status, value)
        })
        .collect();
    let summary: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|(id, status, _)| (id.as_str(), status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("ok", "STARTED"),
            ("ok", "SUCCESS"),
            ("failed", "FAILURE"),
            ("rejected", "FAILURE"),
            ("revoked", "REVOKED"),
            ("expired", "REVOKED"),
        ]
    );
    let failure = &outcomes[2].2["result"];
    assert_eq!(failure["exc_type"].as_str(), Some("RuntimeError"));
    assert_eq!(
        failure["exc_message"][0].as_str(),
        Some("handlers failed: tests::work")
    );
    assert_eq!(
        outcomes[3].2["result"]["exc_message"][0].as_str(),
        Some("not a task this worker knows")
    );
    assert_eq!(run.stats.results_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_backend_is_retried_with_backoff_and_what_is_lost_counted() {
    let run = start_results(false);
    run.broker.set(Behaviour::Fail);
    let tasks: Vec<TaskMessage> = (0..50).map(|n| task(&format!("t{n}"))).collect();
    for task in &tasks {
        run.results.on_event(&succeeded(task));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // In one second of backoff from 200 ms (at least 75 % of each step, doubling): attempts
    // at 0, ≥ 0.15, ≥ 0.45 s — not one per result.
    let attempts = run.broker.attempts.load(Ordering::SeqCst);
    assert!((2..=4).contains(&attempts), "{attempts} attempts");
    // The backend is back: the results made meanwhile wait in the queue for the next attempt.
    run.broker.set(Behaviour::Take);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = task("back");
    run.results.on_event(&succeeded(&back));
    run.results.finish(run.writer).await;
    let stored = run.broker.stored.lock().unwrap().clone();
    let lost = run.stats.results_dropped.load(Ordering::Relaxed);
    assert!(stored.iter().any(|w| w.key == "celery-task-meta-back"));
    assert_eq!(
        lost + stored.len() as u64,
        51,
        "each result stored or counted"
    );
    assert!(
        lost >= 1 && stored.len() >= 2,
        "{lost} lost, {} stored",
        stored.len()
    );
}

#[tokio::test(start_paused = true)]
async fn finishing_results_is_bounded_when_the_backend_hangs_or_is_down() {
    for behaviour in [Behaviour::Hang, Behaviour::Fail] {
        let run = start_results(false);
        run.broker.set(behaviour);
        let tasks: Vec<TaskMessage> = (0..10).map(|n| task(&format!("t{n}"))).collect();
        run.results.on_event(&succeeded(&tasks[0]));
        // The writer takes the first and hangs, or fails and waits to retry.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for task in &tasks[1..] {
            run.results.on_event(&succeeded(task));
        }
        let started = Instant::now();
        tokio::time::timeout(HUNG, run.results.finish(run.writer))
            .await
            .expect("Results::finish returns whatever the backend does");
        assert!(
            started.elapsed() <= Duration::from_secs(2) + CLOSE_LIMIT,
            "{behaviour:?}"
        );
        assert_eq!(
            run.broker.attempts.load(Ordering::SeqCst),
            1,
            "{behaviour:?}"
        );
        assert_eq!(
            run.stats.results_dropped.load(Ordering::Relaxed),
            10,
            "{behaviour:?}"
        );
    }
}

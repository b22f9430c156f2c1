//! The worker's event stream, heard by a custom observer over a real run on each broker: the
//! exact sequence of events for a success, a handler failure that is retried then succeeds, a
//! handler that exhausts its retries (dead-lettered), and an expired message — and the
//! worker's own events around them (online, connected, offline); on RabbitMQ, messages received
//! but still waiting for a slot when the worker stops are returned unrun, and run later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events_celery::{
    CeleryBackend, CeleryConfig, RetryPolicy, Worker, WorkerConfig, WorkerEvent, WorkerObserver,
};
use events_core::{domain_event, handler};
use tests::{amqp_url, eventually, redis_url, unique_queue};

#[domain_event(name = "observer.paid")]
#[derive(Debug, Clone)]
struct Paid {
    run: String,
}

#[handler]
fn book_payment(_event: &Paid) {}

#[domain_event(name = "observer.flaky")]
#[derive(Debug, Clone)]
struct Flaky {
    run: String,
}

/// Runs that already failed once, by run.
static FAILED_ONCE: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[handler(max_retries = 1)]
fn fails_once(event: &Flaky) -> Result<(), std::io::Error> {
    let mut failed = FAILED_ONCE.lock().unwrap();
    if failed.contains(&event.run) {
        return Ok(());
    }
    failed.push(event.run.clone());
    Err(std::io::Error::other("first attempt refused"))
}

#[domain_event(name = "observer.doomed")]
#[derive(Debug, Clone)]
struct Doomed {
    run: String,
}

#[handler(max_retries = 0)]
fn always_fails(_event: &Doomed) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("never works"))
}

#[domain_event(name = "observer.slow")]
#[derive(Debug, Clone)]
struct Slow {
    run: String,
}

/// Released runs of `takes_its_time`, and the task ids it finished.
static SLOW: Mutex<(Vec<String>, Vec<String>)> = Mutex::new((Vec::new(), Vec::new()));

/// Waits until its run is released (at most a minute), then records its task id.
#[handler]
fn takes_its_time(event: &Slow) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !SLOW.lock().unwrap().0.contains(&event.run) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let id = events_core::task::current().map_or_else(String::new, |t| t.id().to_owned());
    SLOW.lock().unwrap().1.push(id);
}

/// What the observer heard: each event's name, with the task id when it has one, plus the
/// details the assertions look at.
#[derive(Debug, Default)]
struct Heard {
    /// Task id → the names of its events, in order.
    by_task: HashMap<String, Vec<String>>,
    /// Events without a task, in order.
    worker: Vec<String>,
    /// Failures seen: (task id, handler, error, will retry).
    failures: Vec<(String, String, String, bool)>,
    /// Dead letters stored: their reasons.
    dead_lettered: Vec<String>,
    /// Retries: (task id, retries of the retry, handlers).
    retries: Vec<(String, u32, Vec<String>)>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Heard>>);

impl WorkerObserver for Recorder {
    fn on_event(&self, event: &WorkerEvent<'_>) {
        let mut heard = self.0.lock().unwrap();
        let mut task_event = |id: &str, name: &str| {
            heard
                .by_task
                .entry(id.to_owned())
                .or_default()
                .push(name.to_owned());
        };
        match event {
            WorkerEvent::Received { task, .. } => task_event(&task.id, "received"),
            WorkerEvent::Started { task, handlers, .. } => {
                assert!(!handlers.is_empty());
                task_event(&task.id, "started");
            }
            WorkerEvent::Succeeded { task, .. } => task_event(&task.id, "succeeded"),
            WorkerEvent::Failed { task, failures, .. } => {
                task_event(&task.id, "failed");
                for failed in failures.iter() {
                    heard.failures.push((
                        task.id.clone(),
                        failed.failure.handler().to_owned(),
                        failed.failure.chain(),
                        failed.will_retry,
                    ));
                }
            }
            WorkerEvent::Retried {
                task,
                retry,
                handlers,
                ..
            } => {
                task_event(&task.id, "retried");
                heard
                    .retries
                    .push((task.id.clone(), retry.headers.retries, handlers.to_vec()));
            }
            WorkerEvent::Rejected {
                task: Some(task), ..
            } => task_event(&task.id, "rejected"),
            WorkerEvent::Expired { task, .. } => task_event(&task.id, "expired"),
            WorkerEvent::Postponed { task, .. } => task_event(&task.id, "postponed"),
            WorkerEvent::Returned {
                task: Some(task), ..
            } => task_event(&task.id, "returned"),
            WorkerEvent::DeadLettered { reason, .. } => {
                heard.dead_lettered.push((*reason).to_owned());
            }
            WorkerEvent::Online { .. } => heard.worker.push("online".to_owned()),
            WorkerEvent::Connected => heard.worker.push("connected".to_owned()),
            WorkerEvent::Offline { .. } => heard.worker.push("offline".to_owned()),
            _ => {}
        }
    }
}

fn events_of(recorder: &Recorder, id: &str) -> Vec<String> {
    recorder
        .0
        .lock()
        .unwrap()
        .by_task
        .get(id)
        .cloned()
        .unwrap_or_default()
}

/// `events` without each `received` directly followed by `postponed` (a message taken before
/// its eta, received again when due).
fn without_postponements(events: Vec<String>) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for event in events {
        if event == "postponed" {
            assert_eq!(
                kept.pop().as_deref(),
                Some("received"),
                "postponed without being received"
            );
            continue;
        }
        kept.push(event);
    }
    kept
}

async fn the_observer_hears_each_message_s_story(url: &str) {
    let queue = unique_queue("observer");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let id = |what: &str| format!("{run}-{what}");
    backend
        .publish_with(&Paid { run: run.clone() }, |o| o.task_id(id("paid")))
        .await
        .unwrap();
    backend
        .publish_with(&Flaky { run: run.clone() }, |o| o.task_id(id("flaky")))
        .await
        .unwrap();
    backend
        .publish_with(&Doomed { run: run.clone() }, |o| o.task_id(id("doomed")))
        .await
        .unwrap();
    backend
        // Due after it expires: the worker postpones it, then finds it expired (an already
        // expired message would be dropped by RabbitMQ itself, before the worker saw it).
        .publish_with(&Paid { run: run.clone() }, |o| {
            o.task_id(id("expired"))
                .countdown(Duration::from_secs(2))
                .expires_in(Duration::from_secs(1))
        })
        .await
        .unwrap();

    let recorder = Recorder::default();
    let worker = Worker::new(
        WorkerConfig::new(url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(1)
            .retry(RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(200),
            }),
    )
    .unwrap()
    .observe(recorder.clone());
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let settled = eventually(Duration::from_secs(20), || async {
        let heard = recorder.0.lock().unwrap();
        let done = |id: &str, last: &str| {
            heard
                .by_task
                .get(id)
                .is_some_and(|events| events.last().is_some_and(|e| e == last))
        };
        (done(&id("paid"), "succeeded")
            && done(&id("flaky"), "succeeded")
            && !heard.dead_lettered.is_empty()
            && done(&id("expired"), "expired"))
        .then_some(())
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(
        settled.is_some(),
        "not every story finished: {:?}",
        recorder.0.lock().unwrap()
    );

    let strings = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        events_of(&recorder, &id("paid")),
        strings(&["received", "started", "succeeded"])
    );
    // Celery keeps the task id across retries: the retry's events follow the first run's. The
    // retry carries an eta: taken before it, it is received and postponed (once or more) first.
    assert_eq!(
        without_postponements(events_of(&recorder, &id("flaky"))),
        strings(&[
            "received",
            "started",
            "failed",
            "retried",
            "received",
            "started",
            "succeeded"
        ])
    );
    assert_eq!(
        events_of(&recorder, &id("doomed")),
        strings(&["received", "started", "failed", "rejected"])
    );
    assert_eq!(
        without_postponements(events_of(&recorder, &id("expired"))),
        strings(&["received", "expired"])
    );

    let heard = recorder.0.lock().unwrap();
    let mut failures = heard.failures.clone();
    failures.sort();
    let [doomed, flaky] = failures.as_slice() else {
        panic!("two failures expected: {failures:?}")
    };
    assert_eq!(
        (doomed.0.as_str(), doomed.1.as_str(), doomed.3),
        (
            id("doomed").as_str(),
            "worker_observer::always_fails",
            false
        )
    );
    assert!(doomed.2.contains("never works"), "{doomed:?}");
    assert_eq!(
        (flaky.0.as_str(), flaky.1.as_str(), flaky.3),
        (id("flaky").as_str(), "worker_observer::fails_once", true)
    );
    assert!(flaky.2.contains("first attempt refused"), "{flaky:?}");
    assert_eq!(
        heard.retries,
        vec![(
            id("flaky"),
            1,
            vec!["worker_observer::fails_once".to_owned()]
        )]
    );
    assert_eq!(heard.dead_lettered.len(), 1, "{:?}", heard.dead_lettered);
    assert!(
        heard.dead_lettered[0].contains("worker_observer::always_fails"),
        "{:?}",
        heard.dead_lettered
    );
    assert_eq!(heard.worker.first().map(String::as_str), Some("online"));
    assert!(heard.worker.contains(&"connected".to_owned()));
    assert_eq!(heard.worker.last().map(String::as_str), Some("offline"));

    // The counters are an observer of the same stream.
    let snapshot: HashMap<_, _> = stats.snapshot().into_iter().collect();
    assert_eq!(snapshot["processed"], 4);
    assert_eq!(snapshot["succeeded"], 2);
    assert_eq!(snapshot["retried"], 1);
    assert_eq!(snapshot["dead_lettered"], 1);
    assert_eq!(snapshot["expired"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_observer_hears_every_event() {
    the_observer_hears_each_message_s_story(&redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_observer_hears_every_event() {
    the_observer_hears_each_message_s_story(&amqp_url()).await;
}

/// RabbitMQ, one slot: the worker receives the three messages at once (prefetch), runs the
/// first and stops while the others wait for the slot: they are returned unrun (`Returned`),
/// the running one finishes in the grace period, and a new worker runs the other two, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_waiting_for_a_slot_are_returned_unrun_at_shutdown() {
    let url = amqp_url();
    let queue = unique_queue("observer_returned");
    let run = queue.clone();
    let backend = CeleryBackend::connect(CeleryConfig::new(&url).unwrap().default_queue(&queue))
        .await
        .unwrap();
    let ids: Vec<String> = (1..=3).map(|n| format!("{run}-{n}")).collect();
    for id in &ids {
        backend
            .publish_with(&Slow { run: run.clone() }, |o| o.task_id(id.as_str()))
            .await
            .unwrap();
    }
    let config = || {
        WorkerConfig::new(&url)
            .unwrap()
            .queues([queue.clone()])
            .concurrency(1)
    };
    let recorder = Recorder::default();
    let worker = Worker::new(config()).unwrap().observe(recorder.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let heard = |id: &str| events_of(&recorder, id);
    let strings = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let first = eventually(Duration::from_secs(20), || async {
        ids.iter()
            .find(|id| heard(id) == ["received", "started"])
            .cloned()
            .filter(|_| ids.iter().all(|id| !heard(id).is_empty()))
    })
    .await
    .unwrap_or_else(|| panic!("not all received: {:?}", recorder.0.lock().unwrap()));
    assert_eq!(first, ids[0], "the first delivered runs first");
    let _ = stop.send(());
    let returned = eventually(Duration::from_secs(20), || async {
        ids[1..]
            .iter()
            .all(|id| heard(id) == ["received", "returned"])
            .then_some(())
    })
    .await;
    SLOW.lock().unwrap().0.push(run.clone());
    running.await.unwrap().unwrap();
    assert!(
        returned.is_some(),
        "the waiting ones are not returned: {:?}",
        recorder.0.lock().unwrap()
    );
    assert_eq!(
        heard(&ids[0]),
        strings(&["received", "started", "succeeded"])
    );

    let worker = Worker::new(config()).unwrap();
    let again = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let drained = eventually(Duration::from_secs(20), || async {
        (again.processed.load(std::sync::atomic::Ordering::Relaxed) == 2).then_some(())
    })
    .await;
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(drained.is_some(), "the returned messages did not run");
    let finished = SLOW.lock().unwrap().1.clone();
    for id in &ids {
        assert_eq!(
            finished.iter().filter(|f| *f == id).count(),
            1,
            "{id} runs once: {finished:?}"
        );
    }
    tests::cleanup_amqp_queue(&queue).await;
}

//! A Rust worker as a member of a Celery cluster, checked with the real clients (Celery 5.7,
//! Flower 2.2 from `scripts/services.sh`), on RabbitMQ and on Redis:
//!
//! - `celery inspect ping|stats|registered|active_queues|active -d <rust worker>` answer;
//! - `celery inspect active|reserved|scheduled|query_task` show what a worker running one task
//!   at a time holds: the one running, those received behind it, the one whose eta is ahead —
//!   and each task moves from reserved to active to gone;
//! - a headless Flower (its HTTP API) lists the worker, then its tasks as succeeded / failed,
//!   retried and rejected once `celery control enable_events` switched task events on;
//! - `celery events --dump` shows the worker's online, heartbeat, task and offline events;
//! - Python's `AsyncResult(id).get()` returns for a task every handler completed and raises
//!   naming the handler for one that failed (Redis result backend);
//! - `celery control revoke` drops a task before it runs; unknown commands get Celery's error,
//!   malformed and huge control messages are ignored and the worker still answers;
//! - `celery control shutdown` stops the worker gracefully.
//!
//! Without the Python interpreter these tests fail (and say to run `scripts/services.sh`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use events_celery::WorkerConfig;
use events_core::{domain_event, handler};
use serde_json::Value;
use tests::{InProcessWorker, LoggedChild, amqp_url, eventually, python, redis_url, unique_queue};

#[domain_event(name = "control_plane.work")]
#[derive(Debug, Clone)]
struct Work {
    run: String,
    fail: bool,
}

/// Handler runs per `run`.
static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn runs(run: &str) -> u32 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.get(run).copied())
        .unwrap_or(0)
}

#[handler(max_retries = 0)]
fn control_plane_work(event: &Work) -> Result<(), std::io::Error> {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(event.run.clone())
        .or_default() += 1;
    if event.fail {
        return Err(std::io::Error::other("the work failed on purpose"));
    }
    Ok(())
}

#[domain_event(name = "control_plane.flaky")]
#[derive(Debug, Clone)]
struct Flaky {
    run: String,
}

/// Fails its first run, succeeds on the retry.
#[handler(max_retries = 1)]
fn control_plane_flaky(_event: &Flaky) -> Result<(), std::io::Error> {
    let retries = events_core::task::current().map_or(0, |task| task.retries());
    if retries == 0 {
        return Err(std::io::Error::other("the first run fails on purpose"));
    }
    Ok(())
}

#[domain_event(name = "control_plane.hold")]
#[derive(Debug, Clone)]
struct Hold {
    run: String,
}

/// What the hold tasks share: the task ids and runs released, the runs finished per task id.
struct Holds {
    released: Vec<String>,
    finished: Option<HashMap<String, u32>>,
}

static HOLD: Mutex<Holds> = Mutex::new(Holds {
    released: Vec::new(),
    finished: None,
});
static HOLD_CHANGED: Condvar = Condvar::new();

/// Blocks until the test releases this task (by id) or its run (a safety limit ends it after
/// two minutes, so a failed test cannot wedge the worker).
#[handler(max_retries = 0)]
fn control_plane_hold(event: &Hold) {
    let id = events_core::task::current().map_or_else(String::new, |task| task.id().to_owned());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut hold = HOLD.lock().unwrap();
    while !hold.released.iter().any(|r| *r == id || *r == event.run) && Instant::now() < deadline {
        hold = HOLD_CHANGED
            .wait_timeout(hold, Duration::from_millis(500))
            .unwrap()
            .0;
    }
    *hold
        .finished
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default() += 1;
}

/// Lets the hold of `what` (a task id, or a run) finish.
fn release(what: &str) {
    HOLD.lock().unwrap().released.push(what.to_owned());
    HOLD_CHANGED.notify_all();
}

/// Finished runs of the hold task `id`.
fn held_runs(id: &str) -> u32 {
    HOLD.lock()
        .unwrap()
        .finished
        .as_ref()
        .and_then(|runs| runs.get(id).copied())
        .unwrap_or(0)
}

const WAIT: Duration = Duration::from_secs(30);

/// Runs Python (`args` after the interpreter) with the broker and result backend set; its
/// stdout, and whether it succeeded.
async fn py(broker: &str, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(python());
    command
        .args(args)
        .env("CELERY_BROKER_URL", broker)
        .env("CELERY_RESULT_BACKEND", redis_url())
        .current_dir(tests::workspace_dir());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        eprintln!(
            "python {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (output.status.success(), stdout)
}

/// `celery -b <broker> <args>`.
async fn celery(broker: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["-m", "celery", "-b", broker];
    all.extend_from_slice(args);
    py(broker, &all).await
}

/// `celery inspect <command> -d <host> -j`: the worker's answer, if it answered.
async fn inspect(broker: &str, host: &str, command: &str) -> Option<Value> {
    inspect_with(broker, host, &[command]).await
}

/// `celery inspect <command and its arguments> -d <host> -j`: the worker's answer, if any.
async fn inspect_with(broker: &str, host: &str, command: &[&str]) -> Option<Value> {
    let mut args = vec!["inspect"];
    args.extend_from_slice(command);
    args.extend_from_slice(&["-d", host, "-j", "--timeout", "3"]);
    let (_, out) = celery(broker, &args).await;
    let json: Value = serde_json::from_str(out.trim()).ok()?;
    json.get(host).cloned()
}

/// `tests/python/control_client.py <args>`.
async fn client(broker: &str, args: &[&str]) -> String {
    let mut all = vec!["tests/python/control_client.py"];
    all.extend_from_slice(args);
    let (ok, out) = py(broker, &all).await;
    assert!(ok, "control_client.py {args:?} failed");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` from Flower's HTTP API: the JSON body, if it answered 200.
async fn flower_get(port: u16, path: &str) -> Option<Value> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| serde_json::from_str(body).ok())
            .flatten()
    })
    .await
    .unwrap()
}

fn spawn_python(name: &'static str, broker: &str, args: &[&str], log: &str) -> LoggedChild {
    let mut command = std::process::Command::new(python());
    command
        .args(["-m", "celery", "-b", broker])
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .current_dir(tests::workspace_dir());
    LoggedChild::spawn(name, &mut command, std::env::temp_dir().join(log))
}

async fn scenario(broker: &str, label: &str) {
    let queue = unique_queue(&format!("ctl_{label}"));
    let host = format!("rust-{queue}@test");
    let run = queue.clone();
    let port = free_port();
    let mut flower = spawn_python(
        "flower",
        broker,
        &[
            "flower",
            "--address=127.0.0.1",
            &format!("--port={port}"),
            "--inspect_timeout=3000",
        ],
        &format!("{queue}.flower.log"),
    );
    let mut dump = spawn_python(
        "celery events --dump",
        broker,
        &["events", "--dump"],
        &format!("{queue}.events.log"),
    );
    eventually(WAIT, || async { flower_get(port, "/api/tasks").await })
        .await
        .unwrap_or_else(|| panic!("Flower did not start:\n{}", flower.log()));
    // `celery events` needs its queue bound before the worker says it is online.
    tokio::time::sleep(Duration::from_secs(2)).await;
    dump.assert_running();

    let config = WorkerConfig::new(broker)
        .unwrap()
        .queues([queue.as_str()])
        .hostname(host.as_str())
        .concurrency(2)
        .result_backend(&redis_url())
        .unwrap();
    let worker = InProcessWorker::start(config);

    // inspect: ping, stats, registered, active_queues, active.
    let pong = eventually(WAIT, || inspect(broker, &host, "ping"))
        .await
        .expect("the Rust worker answers `celery inspect ping`");
    assert_eq!(pong, serde_json::json!({"ok": "pong"}));
    let stats = inspect(broker, &host, "stats").await.expect("stats");
    assert_eq!(stats["pid"], std::process::id());
    assert_eq!(stats["pool"]["max-concurrency"], 2);
    let registered = inspect(broker, &host, "registered").await.unwrap();
    assert!(
        registered
            .as_array()
            .unwrap()
            .contains(&Value::from("domain_events.control_plane.work")),
        "{registered}"
    );
    let queues = inspect(broker, &host, "active_queues").await.unwrap();
    assert_eq!(queues[0]["name"], queue.as_str(), "{queues}");
    assert_eq!(
        inspect(broker, &host, "active").await.unwrap(),
        Value::Array(vec![])
    );

    // Flower lists the worker (its API asks the worker itself).
    eventually(WAIT, || async {
        let workers = flower_get(port, "/api/workers?refresh=1").await?;
        workers.get(&host).is_some().then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("Flower does not list {host}:\n{}", flower.log()));
    let alive = |want: bool| {
        let host = host.clone();
        async move {
            let status = flower_get(port, "/api/workers?status=true").await?;
            (status.get(&host)?.as_bool()? == want).then_some(())
        }
    };
    eventually(WAIT, || alive(true))
        .await
        .expect("Flower shows the worker online (its heartbeats)");

    // Task events on, by remote control (Flower sends `enable_events` itself too, so they may
    // be on already); then one task that succeeds, one that fails.
    let (ok, out) = celery(broker, &["control", "enable_events", "-d", &host]).await;
    assert!(ok && out.contains("task events"), "{out}");
    let ok_id = client(
        broker,
        &["send", "--queue", &queue, "--run", &format!("{run}-ok")],
    )
    .await;
    let fail_run = format!("{run}-fail");
    let fail_id = client(
        broker,
        &["send", "--queue", &queue, "--run", &fail_run, "--fail"],
    )
    .await;
    let (ok_id, fail_id) = (ok_id.trim().to_owned(), fail_id.trim().to_owned());
    let results = client(broker, &["results", &ok_id, &fail_id]).await;
    let results: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results[0], serde_json::json!({"id": ok_id, "ok": null}));
    assert_eq!(results[1]["raised"], "RuntimeError", "{}", results[1]);
    assert!(
        results[1]["message"]
            .as_str()
            .unwrap()
            .contains("control_plane_work"),
        "the failure names the handler: {}",
        results[1]
    );
    // Flower saw both tasks, by their events.
    eventually(WAIT, || async {
        let tasks = flower_get(port, "/api/tasks").await?;
        let state = |id: &str| tasks.get(id)?.get("state")?.as_str().map(str::to_owned);
        (state(&ok_id)?.as_str() == "SUCCESS" && state(&fail_id)?.as_str() == "FAILURE")
            .then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "Flower does not show the tasks as succeeded / failed:\n{}",
            flower.log()
        )
    });

    // A task retried once, and one rejected (its payload does not fit the event: dead-lettered
    // unrun), as Flower's state machine (Celery's `celery.events.state`) records their events.
    let flaky_id = client(
        broker,
        &[
            "send",
            "--queue",
            &queue,
            "--event",
            "control_plane.flaky",
            "--payload",
            &serde_json::json!({"run": run}).to_string(),
        ],
    )
    .await;
    let rejected_id = client(
        broker,
        &[
            "send",
            "--queue",
            &queue,
            "--payload",
            &serde_json::json!({"run": run, "fail": "not a bool"}).to_string(),
        ],
    )
    .await;
    let (flaky_id, rejected_id) = (flaky_id.trim().to_owned(), rejected_id.trim().to_owned());
    let (flaky, rejected) = eventually(WAIT, || async {
        let tasks = flower_get(port, "/api/tasks").await?;
        let (flaky, rejected) = (tasks.get(&flaky_id)?, tasks.get(&rejected_id)?);
        (flaky["state"] == "SUCCESS" && !rejected["rejected"].is_null())
            .then(|| (flaky.clone(), rejected.clone()))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "Flower does not show the retried task ({flaky_id}) succeeded and the rejected one \
             ({rejected_id}) rejected:\n{}",
            flower.log()
        )
    });
    // Retried: its `task-retried` set `retried` and the exception; the retry's own events
    // (received, started, succeeded) then moved the state on — RETRY is only ever the state
    // until the retry message is received, as with a Python worker.
    assert!(flaky["retried"].as_f64().is_some(), "{flaky}");
    assert_eq!(flaky["retries"], 1, "{flaky}");
    let exception = flaky["exception"].as_str().unwrap_or_default();
    assert!(
        exception.starts_with("Retry(") && exception.contains("control_plane_flaky"),
        "{flaky}"
    );
    // Rejected: `task-rejected` set `rejected`, but REJECTED ranks below RECEIVED in Celery's
    // state precedence (a rejection is taken to happen before the receipt), so the state stays
    // RECEIVED — what Flower shows for a Python worker's rejected task too.
    assert!(rejected["rejected"].as_f64().is_some(), "{rejected}");
    assert_eq!(rejected["state"], "RECEIVED", "{rejected}");

    // Revoke before the task arrives: dropped unrun, REVOKED for AsyncResult.
    let revoked_id = uuid::Uuid::new_v4().to_string();
    let (ok, out) = celery(broker, &["control", "revoke", &revoked_id, "-d", &host]).await;
    assert!(ok && out.contains("revoked"), "{out}");
    let revoked_run = format!("{run}-revoked");
    client(
        broker,
        &[
            "send",
            "--queue",
            &queue,
            "--run",
            &revoked_run,
            "--task-id",
            &revoked_id,
        ],
    )
    .await;
    let revoked = client(broker, &["results", &revoked_id]).await;
    assert!(revoked.contains("TaskRevokedError"), "{revoked}");
    assert_eq!(runs(&revoked_run), 0, "a revoked task does not run");

    // Bad control messages: an error reply, nothing for the rest, and it still answers.
    let bad: Value =
        serde_json::from_str(client(broker, &["bad", "--hostname", &host]).await.trim()).unwrap();
    assert_eq!(
        bad["unknown"],
        serde_json::json!([{ host.as_str(): {"error": "KeyError('no_such_command')"} }])
    );
    assert_eq!(bad["huge"], serde_json::json!([]));
    assert_eq!(
        bad["ping_after"],
        serde_json::json!([{ host.as_str(): {"ok": "pong"} }])
    );
    assert!(!worker.is_finished());

    // Shutdown by remote control: the worker stops by itself. (As with a Python worker, the
    // CLI then says no node replied: `shutdown` gets no reply.)
    let (_, out) = celery(
        broker,
        &["control", "shutdown", "-d", &host, "--timeout", "1"],
    )
    .await;
    assert!(out.trim().is_empty(), "{out}");
    eventually(WAIT, || async { worker.is_finished().then_some(()) })
        .await
        .expect("the worker stops after `celery control shutdown`");
    let stats = worker.stop().await;
    // ok, fail, and the flaky task's two runs (the rejected and revoked ones never ran).
    assert_eq!(
        stats.processed.load(std::sync::atomic::Ordering::Relaxed),
        4
    );

    // What `celery events --dump` printed for this worker.
    let log = eventually(WAIT, || async {
        let log = dump.log();
        log.contains(&format!("{host} [")).then_some(())?;
        // evdump prints worker-online as `started`, worker-offline as `shutdown`.
        log.contains("] shutdown:").then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("celery events --dump:\n{}", dump.log()));
    for wanted in [
        "] started:",
        "] heartbeat:",
        "] task received:",
        "] task succeeded:",
        "] task failed:",
        "] task retried:",
        "] task rejected:",
        "] task revoked:",
        "] shutdown:",
    ] {
        assert!(
            log.contains(wanted),
            "`{wanted}` missing from celery events --dump:\n{log}"
        );
    }
    flower.assert_running();
}

/// Sends `count` hold tasks for `run` to `queue`; with `eta_in` (seconds), each due that much
/// later. The ids, each followed (with an eta) by its eta as `isoformat()`.
async fn send_holds(
    broker: &str,
    queue: &str,
    run: &str,
    count: usize,
    eta_in: Option<&str>,
) -> Vec<String> {
    let payload = serde_json::json!({ "run": run }).to_string();
    let count = count.to_string();
    let mut args = vec![
        "send",
        "--queue",
        queue,
        "--event",
        "control_plane.hold",
        "--payload",
        &payload,
        "--count",
        &count,
    ];
    if let Some(eta_in) = eta_in {
        args.extend_from_slice(&["--eta-in", eta_in]);
    }
    client(broker, &args)
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The ids of the tasks in an `inspect active|reserved` answer, sorted.
fn ids(tasks: &Value) -> Vec<String> {
    let mut ids: Vec<String> = tasks
        .as_array()
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(|t| t["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// What the worker holds, as `celery inspect active`, `reserved` and `scheduled` answer.
async fn holding(broker: &str, host: &str) -> Option<[Value; 3]> {
    let (active, reserved, scheduled) = tokio::join!(
        inspect(broker, host, "active"),
        inspect(broker, host, "reserved"),
        inspect(broker, host, "scheduled"),
    );
    Some([active?, reserved?, scheduled?])
}

/// A worker running one task at a time, its one slot taken by a task that blocks until the
/// test releases it: `celery inspect` shows that task active, the two received behind it
/// reserved, one due a minute later scheduled (with its eta), each as Celery's `Request.info()`;
/// `query_task` names each state. Released, the first is gone and one of the two reserved is
/// active; released all, everything runs (the one with an eta once due) and the lists empty.
async fn one_slot(broker: &str, label: &str) {
    let queue = unique_queue(&format!("ctl_slot_{label}"));
    let host = format!("rust-{queue}@test");
    let run = queue.clone();
    let config = WorkerConfig::new(broker)
        .unwrap()
        .queues([queue.as_str()])
        .hostname(host.as_str())
        .concurrency(1);
    let worker = InProcessWorker::start(config);
    eventually(WAIT, || inspect(broker, &host, "ping"))
        .await
        .expect("the Rust worker answers `celery inspect ping`");

    let first = send_holds(broker, &queue, &run, 1, None).await.remove(0);
    eventually(WAIT, || async {
        let active = inspect(broker, &host, "active").await?;
        (ids(&active) == [first.clone()]).then_some(())
    })
    .await
    .expect("the first task runs");
    let mut behind = send_holds(broker, &queue, &run, 2, None).await;
    behind.sort();
    // Due in a minute: still ahead when the lists are read, however slow the machine.
    let later = send_holds(broker, &queue, &run, 1, Some("60")).await;
    let (later_id, later_eta) = (later[0].clone(), later[1].clone());

    // Everything sent is held by the worker: received (taken from the broker) at once.
    let [active, reserved, scheduled] = eventually(WAIT, || async {
        let held = holding(broker, &host).await?;
        (ids(&held[1]) == behind && held[2].as_array()?.len() == 1).then_some(held)
    })
    .await
    .unwrap_or_else(|| {
        panic!("the worker does not list {behind:?} reserved and {later_id} scheduled")
    });
    // Celery's `Request.info()`, for a task of this worker taken from `queue`.
    let info = |id: &str, exchange: &Value| {
        serde_json::json!({
            "id": id,
            "name": "domain_events.control_plane.hold",
            "args": [],
            "kwargs": {"payload": {"run": run}},
            "type": "domain_events.control_plane.hold",
            "hostname": host,
            "time_start": null,
            "acknowledged": false,
            "delivery_info": {
                "exchange": exchange,
                "routing_key": queue,
                "priority": 0,
                "redelivered": false,
            },
            "worker_pid": null,
        })
    };
    let exchange = &reserved[0]["delivery_info"]["exchange"];
    assert!(
        exchange == "" || exchange == queue.as_str(),
        "the exchange it was published to: {reserved}"
    );
    let mut listed = reserved.as_array().unwrap().clone();
    listed.sort_by_key(|t| t["id"].as_str().unwrap().to_owned());
    assert_eq!(
        listed,
        [info(&behind[0], exchange), info(&behind[1], exchange)]
    );
    assert_eq!(
        scheduled,
        serde_json::json!([{
            "eta": later_eta,
            "priority": 6,
            "request": info(&later_id, exchange),
        }])
    );
    let running = &active[0];
    assert_eq!(ids(&active), std::slice::from_ref(&first));
    assert!(running["time_start"].as_f64().is_some(), "{running}");
    assert_eq!(running["worker_pid"], std::process::id(), "{running}");
    let mut expected = info(&first, exchange);
    expected["time_start"] = running["time_start"].clone();
    expected["worker_pid"] = running["worker_pid"].clone();
    assert_eq!(*running, expected);
    let queried = inspect_with(
        broker,
        &host,
        &["query_task", &first, &behind[0], &later_id, "no-such-task"],
    )
    .await
    .expect("query_task");
    assert_eq!(
        queried,
        serde_json::json!({
            first.as_str(): ["active", running],
            behind[0].as_str(): ["reserved", info(&behind[0], exchange)],
            later_id.as_str(): ["scheduled", info(&later_id, exchange)],
        })
    );

    // Reserved, then active: the first done, one of the two behind it runs.
    release(&first);
    let (active, reserved) = eventually(WAIT, || async {
        let [active, reserved, _] = holding(broker, &host).await?;
        let (active, reserved) = (ids(&active), ids(&reserved));
        (active.len() == 1 && active != [first.clone()] && reserved.len() == 1)
            .then_some((active, reserved))
    })
    .await
    .expect("the first task finishes and one behind it starts");
    let mut moved = [active, reserved].concat();
    moved.sort();
    assert_eq!(moved, behind);
    assert_eq!(held_runs(&first), 1);

    // Then gone: everything runs, the one with an eta when it is due (it waits in the broker
    // meanwhile, not held by the worker).
    release(&run);
    eventually(Duration::from_secs(120), || async {
        (held_runs(&later_id) == 1).then_some(())
    })
    .await
    .expect("the task with an eta runs once due");
    for id in &behind {
        assert_eq!(held_runs(id), 1, "{id}");
    }
    let empty = Value::Array(Vec::new());
    let held = eventually(WAIT, || async {
        let held = holding(broker, &host).await?;
        held.iter().all(|list| *list == empty).then_some(())
    })
    .await;
    assert!(
        held.is_some(),
        "the worker still lists tasks: {:?}",
        holding(broker, &host).await
    );
    worker.stop().await;
    assert_eq!(held_runs(&later_id), 1, "run once");
    if broker.starts_with("redis") {
        tests::cleanup_redis_queue(&queue, &[]).await;
    } else {
        tests::cleanup_amqp_queue(&queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_reserved_and_scheduled_on_redis() {
    one_slot(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_reserved_and_scheduled_on_rabbitmq() {
    one_slot(&amqp_url(), "amqp").await;
}

/// A Python and a Rust worker on one queue both appear in Flower, each under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_workers_on_one_queue_both_in_flower() {
    let broker = redis_url();
    let queue = unique_queue("ctl_mixed");
    let host = format!("rust-{queue}@test");
    let port = free_port();
    let flower = spawn_python(
        "flower",
        &broker,
        &["flower", "--address=127.0.0.1", &format!("--port={port}")],
        &format!("{queue}.flower.log"),
    );
    eventually(WAIT, || async { flower_get(port, "/api/tasks").await })
        .await
        .unwrap_or_else(|| panic!("Flower did not start:\n{}", flower.log()));
    let mut python_worker =
        tests::PythonWorkerSpec::new(&broker, &queue, &format!("{queue}.results"))
            .remote_control()
            .start();
    python_worker.wait_ready();
    let config = WorkerConfig::new(&broker)
        .unwrap()
        .queues([queue.as_str()])
        .hostname(host.as_str());
    let worker = InProcessWorker::start(config);
    // The Python worker is named `<queue>@<host>`.
    let python_prefix = format!("{queue}@");
    let listed = eventually(WAIT, || async {
        let workers = flower_get(port, "/api/workers?refresh=1").await?;
        let names = workers.as_object()?;
        let python = names.keys().any(|n| n.starts_with(&python_prefix));
        (python && names.contains_key(&host)).then_some(())
    })
    .await;
    assert!(
        listed.is_some(),
        "Flower does not list both workers: {:?}",
        flower_get(port, "/api/workers").await
    );
    worker.stop().await;
    python_worker.stop();
}

/// A read-only worker answers `inspect` and refuses what would change it (`revoke`,
/// `shutdown`), and stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_control_refuses_state_changes() {
    let broker = redis_url();
    let queue = unique_queue("ctl_ro");
    let host = format!("rust-{queue}@test");
    let config = WorkerConfig::new(&broker)
        .unwrap()
        .queues([queue.as_str()])
        .hostname(host.as_str())
        .control_read_only(true);
    let worker = InProcessWorker::start(config);
    let pong = eventually(WAIT, || inspect(&broker, &host, "ping")).await;
    assert_eq!(pong, Some(serde_json::json!({"ok": "pong"})));
    let (_, out) = celery(&broker, &["control", "revoke", "some-id", "-d", &host]).await;
    assert!(out.contains("refused"), "{out}");
    let (_, out) = celery(
        &broker,
        &["control", "shutdown", "-d", &host, "--timeout", "2"],
    )
    .await;
    assert!(out.contains("refused"), "{out}");
    assert_eq!(
        inspect(&broker, &host, "ping").await,
        Some(serde_json::json!({"ok": "pong"}))
    );
    assert!(!worker.is_finished());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_redis() {
    scenario(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_rabbitmq() {
    scenario(&amqp_url(), "amqp").await;
}

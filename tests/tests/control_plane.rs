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
//! - `celery control shutdown` stops the worker gracefully;
//! - `celery control add_consumer` / `cancel_consumer` (and `app.control.add_consumer` with a
//!   topic exchange) start and stop queues on the running worker with Celery's replies:
//!   `inspect active_queues` follows, a cancelled queue keeps what is published to it (and what
//!   the worker had prefetched from it), running messages finish, a reconnection consumes the
//!   queues of the moment, bad arguments get Celery's errors, a worker without queues stays
//!   up answering, and the replies are the ones a Python worker gives.
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
    // `celery events` needs its queue bound (Redis: its channel subscribed) before the worker
    // says it is online: it starts capturing after it says so, on a loaded machine seconds later.
    eventually(WAIT, || async {
        dump.log().contains("starting capture").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("celery events --dump did not start:\n{}", dump.log()));
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
        &[
            "flower",
            "--address=127.0.0.1",
            &format!("--port={port}"),
            // Its default (1 s) is too short for a loaded machine's workers to answer.
            "--inspect_timeout=5000",
        ],
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
/// `shutdown`, `add_consumer`, `cancel_consumer`), and stays up.
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
    // Queue changes are state changes too: refused, and the queues stay as they were.
    let other = unique_queue("ctl_ro_other");
    for (command, queue) in [("add_consumer", &other), ("cancel_consumer", &queue)] {
        let replies = control_queue(&broker, &host, command, queue).await;
        let error = replies[0][host.as_str()]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            error.contains(&format!("`{command}` is refused")),
            "{replies}"
        );
    }
    assert_eq!(active_queue_names(&broker, &host).await, [queue.as_str()]);
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

#[domain_event(name = "control_plane.gated")]
#[derive(Debug, Clone)]
struct Gated {
    run: String,
}

/// `control_plane.gated` runs that started, per `run`.
static HELD: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// The gate each `gated` run waits at, opened by the test.
fn gate(run: &str) -> std::sync::Arc<tokio::sync::Semaphore> {
    static GATES: Mutex<Option<HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>> =
        Mutex::new(None);
    std::sync::Arc::clone(
        GATES
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .entry(run.to_owned())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(0))),
    )
}

fn held(run: &str) -> u32 {
    HELD.lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.get(run).copied())
        .unwrap_or(0)
}

/// Waits until the test opens the run's gate (a minute at most, so that a failing test does
/// not leave it hanging).
#[handler(max_retries = 0)]
async fn control_plane_gated(event: &Gated) -> Result<(), std::io::Error> {
    *HELD
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(event.run.clone())
        .or_default() += 1;
    let gate = gate(&event.run);
    let _ = tokio::time::timeout(Duration::from_secs(60), gate.acquire()).await;
    Ok(())
}

/// How many messages wait in `queue` (RabbitMQ: ready, not delivered; Redis: in its list).
async fn queued(broker: &str, queue: &str) -> u32 {
    if broker.starts_with("redis") {
        let mut redis = tests::redis().await;
        let len: u32 = redis::cmd("LLEN")
            .arg(queue)
            .query_async(&mut redis)
            .await
            .unwrap();
        return len;
    }
    amqp_queue(queue).await.map_or(0, |(ready, _)| ready)
}

/// RabbitMQ: the queue's ready messages and consumers (a passive declare); `None` if it does
/// not exist.
async fn amqp_queue(queue: &str) -> Option<(u32, u32)> {
    let (connection, channel) = tests::amqp_channel().await;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .ok();
    let _ = connection.close(200, "done".into()).await;
    declared.map(|d| (d.message_count(), d.consumer_count()))
}

/// Whether a message published to `exchange` now reaches `queue`: RabbitMQ, the worker
/// consumes it (it binds before consuming); Redis, kombu's binding entry is written.
async fn routed(broker: &str, queue: &str, exchange: &str) -> bool {
    if broker.starts_with("redis") {
        let mut redis = tests::redis().await;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("_kombu.binding.{exchange}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        return members
            .iter()
            .any(|m| m.ends_with(&format!("\x06\x16{queue}")));
    }
    amqp_queue(queue)
        .await
        .is_some_and(|(_, consumers)| consumers > 0)
}

/// `celery control <command> <queue> -d <host> --json`: the replies.
async fn control_queue(broker: &str, host: &str, command: &str, queue: &str) -> Value {
    let (ok, out) = celery(
        broker,
        &[
            "control",
            command,
            queue,
            "-d",
            host,
            "--json",
            "--timeout",
            "5",
        ],
    )
    .await;
    assert!(ok, "celery control {command} {queue}: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("not JSON: {out}"))
}

/// The names `celery inspect active_queues` lists for the worker.
async fn active_queue_names(broker: &str, host: &str) -> Vec<String> {
    let queues = inspect(broker, host, "active_queues")
        .await
        .expect("active_queues answers");
    queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn send(broker: &str, queue: &str, run: &str) {
    client(broker, &["send", "--queue", queue, "--run", run]).await;
}

async fn wait_runs(run: &str, want: u32) {
    eventually(WAIT, || async { (runs(run) >= want).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("`{run}` did not run"));
}

/// `celery control add_consumer` / `cancel_consumer` on a running Rust worker, with Celery's
/// replies: queues start and stop being consumed without a restart.
async fn consumers_scenario(broker: &str, label: &str) {
    let a = unique_queue(&format!("ctl_cons_a_{label}"));
    let b = unique_queue(&format!("ctl_cons_b_{label}"));
    let c = unique_queue(&format!("ctl_cons_c_{label}"));
    let exchange = unique_queue(&format!("ctl_cons_ex_{label}"));
    let unknown = unique_queue("ctl_cons_never");
    let host = format!("rust-{a}@test");
    let config = WorkerConfig::new(broker)
        .unwrap()
        .queues([a.as_str()])
        .hostname(host.as_str())
        .concurrency(2)
        .grace_period(Duration::from_secs(5));
    let worker = InProcessWorker::start(config);
    eventually(WAIT, || inspect(broker, &host, "ping"))
        .await
        .expect("the Rust worker answers `celery inspect ping`");

    // add_consumer: Celery's reply; B consumed from then on, and listed.
    let reply = |text: String| serde_json::json!([{ host.as_str(): {"ok": text} }]);
    assert_eq!(
        control_queue(broker, &host, "add_consumer", &b).await,
        reply(format!("add consumer {b}"))
    );
    let run_b = format!("{b}-1");
    send(broker, &b, &run_b).await;
    wait_runs(&run_b, 1).await;
    assert_eq!(
        active_queue_names(broker, &host).await,
        [a.clone(), b.clone()]
    );
    let queues = inspect(broker, &host, "active_queues").await.unwrap();
    assert_eq!(queues[1]["exchange"]["name"], b.as_str(), "{queues}");
    assert_eq!(queues[1]["exchange"]["type"], "direct");
    assert_eq!(queues[1]["routing_key"], b.as_str());
    // Again: Celery's same reply, and nothing changes.
    assert_eq!(
        control_queue(broker, &host, "add_consumer", &b).await,
        reply(format!("add consumer {b}"))
    );
    assert_eq!(
        active_queue_names(broker, &host).await,
        [a.clone(), b.clone()]
    );

    // From Python's API, through a topic exchange: the worker declares and binds it as
    // Celery's worker does, and messages routed through it run.
    let added = client(
        broker,
        &[
            "add",
            "--hostname",
            &host,
            "--queue",
            &c,
            "--exchange",
            &exchange,
            "--type",
            "topic",
            "--routing-key",
            "orders.#",
        ],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(added.trim()).unwrap(),
        reply(format!("add consumer {c}"))
    );
    eventually(WAIT, || async {
        routed(broker, &c, &exchange).await.then_some(())
    })
    .await
    .expect("the added queue is bound to its exchange");
    let run_c = format!("{c}-1");
    client(
        broker,
        &[
            "send",
            "--run",
            &run_c,
            "--exchange",
            &exchange,
            "--routing-key",
            "orders.eu.created",
        ],
    )
    .await;
    wait_runs(&run_c, 1).await;
    let queues = inspect(broker, &host, "active_queues").await.unwrap();
    assert_eq!(queues[2]["exchange"]["name"], exchange.as_str(), "{queues}");
    assert_eq!(queues[2]["exchange"]["type"], "topic");
    assert_eq!(queues[2]["routing_key"], "orders.#");

    // cancel_consumer: A no longer runs here; what is published to it stays in it.
    assert_eq!(
        control_queue(broker, &host, "cancel_consumer", &a).await,
        reply(format!("no longer consuming from {a}"))
    );
    let run_a = format!("{a}-1");
    send(broker, &a, &run_a).await;
    let run_b2 = format!("{b}-2");
    send(broker, &b, &run_b2).await;
    wait_runs(&run_b2, 1).await;
    eventually(WAIT, || async {
        (queued(broker, &a).await == 1).then_some(())
    })
    .await
    .expect("the message published to the cancelled queue stays in it");
    assert_eq!(runs(&run_a), 0, "a cancelled queue's message does not run");
    assert_eq!(
        active_queue_names(broker, &host).await,
        [b.clone(), c.clone()]
    );
    // Cancelling a queue not consumed: Celery's reply.
    assert_eq!(
        control_queue(broker, &host, "cancel_consumer", &unknown).await,
        reply(format!("no longer consuming from {unknown}"))
    );

    // Bad arguments: errors as Celery's, and the worker goes on answering.
    let bad: Value = serde_json::from_str(
        client(broker, &["bad_consumers", "--hostname", &host])
            .await
            .trim(),
    )
    .unwrap();
    let error = |case: &str| -> String {
        bad[case][0][host.as_str()]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: {}", bad[case]))
            .to_owned()
    };
    assert_eq!(
        error("missing"),
        "TypeError(\"add_consumer() missing 1 required positional argument: 'queue'\")"
    );
    assert_eq!(
        error("not_text"),
        "TypeError(\"add_consumer() argument 'queue' must be str, not int\")"
    );
    assert_eq!(error("empty"), "ValueError('a queue name cannot be empty')");
    assert!(error("huge").contains("100000 bytes is longer than the 255"));
    assert!(error("separator").contains("control character"));
    assert!(error("headers").contains("'headers' is not supported"));
    assert!(error("option").contains("'exclusive' is not supported"));
    assert!(error("cancel_list").contains("must be str, not list"));
    assert!(error("cancel_huge").contains("longer than the 255"));
    assert_eq!(
        bad["ping_after"],
        serde_json::json!([{ host.as_str(): {"ok": "pong"} }])
    );
    assert_eq!(
        active_queue_names(broker, &host).await,
        [b.clone(), c.clone()]
    );

    // The last queues go: the worker stays, idle, answering.
    for queue in [&b, &c] {
        control_queue(broker, &host, "cancel_consumer", queue).await;
    }
    assert!(active_queue_names(broker, &host).await.is_empty());
    assert_eq!(
        inspect(broker, &host, "ping").await,
        Some(serde_json::json!({"ok": "pong"}))
    );
    assert!(!worker.is_finished());
    // A back: the message that waited in it runs (nothing was lost).
    control_queue(broker, &host, "add_consumer", &a).await;
    wait_runs(&run_a, 1).await;
    assert_eq!(active_queue_names(broker, &host).await, [a.as_str()]);

    let stats = worker.stop().await;
    assert_eq!(
        stats.processed.load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    assert_eq!(runs(&run_a), 1);
    for queue in [&a, &b, &c, &exchange] {
        cleanup(broker, queue).await;
    }
}

async fn cleanup(broker: &str, queue: &str) {
    if broker.starts_with("redis") {
        tests::cleanup_redis_queue(queue, &[]).await;
    } else {
        tests::cleanup_amqp_queue(queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_cancel_consumer_on_redis() {
    consumers_scenario(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_cancel_consumer_on_rabbitmq() {
    consumers_scenario(&amqp_url(), "amqp").await;
}

/// Cancelling a queue while one of its messages runs and two more wait in the worker: the
/// running one finishes and is acknowledged; the two others go back to the queue unrun (on
/// Redis at once, on RabbitMQ as soon as a slot frees); nothing is lost.
async fn cancel_while_running(broker: &str, label: &str) {
    let queue = unique_queue(&format!("ctl_hold_{label}"));
    let host = format!("rust-{queue}@test");
    let config = WorkerConfig::new(broker)
        .unwrap()
        .queues([queue.as_str()])
        .hostname(host.as_str())
        .concurrency(1)
        .grace_period(Duration::from_secs(5));
    let worker = InProcessWorker::start(config);
    eventually(WAIT, || inspect(broker, &host, "ping"))
        .await
        .expect("the Rust worker answers");
    let runs: Vec<String> = (1..=3).map(|n| format!("{queue}-{n}")).collect();
    for run in &runs {
        client(broker, &["send", "--queue", &queue, "--run", run, "--hold"]).await;
    }
    eventually(WAIT, || async { (held(&runs[0]) == 1).then_some(()) })
        .await
        .expect("the first message runs");
    // The other two are in the worker (prefetched), not in the queue.
    eventually(WAIT, || async {
        (queued(broker, &queue).await == 0).then_some(())
    })
    .await
    .expect("the worker took the waiting messages");
    control_queue(broker, &host, "cancel_consumer", &queue).await;
    if broker.starts_with("redis") {
        eventually(WAIT, || async {
            (queued(broker, &queue).await == 2).then_some(())
        })
        .await
        .expect("the waiting messages go back at once");
    }
    gate(&runs[0]).add_permits(1);
    eventually(WAIT, || async {
        (worker
            .stats
            .processed
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    })
    .await
    .expect("the running message finishes");
    eventually(WAIT, || async {
        (queued(broker, &queue).await == 2).then_some(())
    })
    .await
    .expect("the waiting messages are back in the queue");
    worker.stop().await;
    // Still two: the one that ran was acknowledged, the others never ran.
    assert_eq!(queued(broker, &queue).await, 2);
    assert_eq!((held(&runs[1]), held(&runs[2])), (0, 0));
    cleanup(broker, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_consumer_while_running_on_redis() {
    cancel_while_running(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_consumer_while_running_on_rabbitmq() {
    cancel_while_running(&amqp_url(), "amqp").await;
}

/// After the connections to the broker break, the worker consumes the queues it consumed
/// then (an added one in, a cancelled configured one out), not those it started with.
async fn reconnect_keeps_the_current_queues(broker: &str, label: &str) {
    let upstream = if broker.starts_with("redis") {
        "127.0.0.1:6379"
    } else {
        "127.0.0.1:5672"
    };
    let proxy = tests::proxy::CuttableProxy::start(upstream);
    let through_proxy = broker.replacen(upstream, &format!("127.0.0.1:{}", proxy.port()), 1);
    assert_ne!(through_proxy, broker, "the broker URL names {upstream}");
    let a = unique_queue(&format!("ctl_recon_a_{label}"));
    let b = unique_queue(&format!("ctl_recon_b_{label}"));
    let host = format!("rust-{a}@test");
    let config = WorkerConfig::new(&through_proxy)
        .unwrap()
        .queues([a.as_str()])
        .hostname(host.as_str())
        .redis_fetchers(2)
        .reconnect_max_delay(Duration::from_millis(500))
        .grace_period(Duration::from_secs(5));
    let worker = InProcessWorker::start(config);
    eventually(WAIT, || inspect(broker, &host, "ping"))
        .await
        .expect("the Rust worker answers");
    control_queue(broker, &host, "add_consumer", &b).await;
    control_queue(broker, &host, "cancel_consumer", &a).await;
    let before = proxy.accepted();
    proxy.cut();
    eventually(WAIT, || async { (proxy.accepted() > before).then_some(()) })
        .await
        .expect("the worker reconnects");
    let (run_a, run_b) = (format!("{a}-1"), format!("{b}-1"));
    send(broker, &a, &run_a).await;
    send(broker, &b, &run_b).await;
    wait_runs(&run_b, 1).await;
    eventually(WAIT, || async {
        (queued(broker, &a).await == 1).then_some(())
    })
    .await
    .expect("the cancelled queue keeps its message");
    assert_eq!(runs(&run_a), 0);
    worker.stop().await;
    for queue in [&a, &b] {
        cleanup(broker, queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_the_current_queues_on_redis() {
    reconnect_keeps_the_current_queues(&redis_url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_the_current_queues_on_rabbitmq() {
    reconnect_keeps_the_current_queues(&amqp_url(), "amqp").await;
}

/// Duplicate `add_consumer` and `cancel_consumer` of an unknown queue: the Rust worker replies
/// what a Python Celery 5.7 worker replies (Celery replies before it changes anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_change_replies_are_a_python_workers() {
    let broker = redis_url();
    let python_queue = unique_queue("ctl_cons_py");
    let rust_queue = unique_queue("ctl_cons_rs");
    let unknown = unique_queue("ctl_cons_never");
    let mut python_worker =
        tests::PythonWorkerSpec::new(&broker, &python_queue, &format!("{python_queue}.results"))
            .remote_control()
            .start();
    python_worker.wait_ready();
    let rust_host = format!("rust-{rust_queue}@test");
    let worker = InProcessWorker::start(
        WorkerConfig::new(&broker)
            .unwrap()
            .queues([rust_queue.as_str()])
            .hostname(rust_host.as_str()),
    );
    eventually(WAIT, || inspect(&broker, &rust_host, "ping"))
        .await
        .expect("the Rust worker answers");
    // The Python worker is named `<queue>@<host>`.
    let python_host = eventually(WAIT, || async {
        let (_, out) = celery(&broker, &["inspect", "ping", "-j", "--timeout", "3"]).await;
        let json: Value = serde_json::from_str(out.trim()).ok()?;
        json.as_object()?
            .keys()
            .find(|name| name.starts_with(&format!("{python_queue}@")))
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("the Python worker answers:\n{}", python_worker.log()));
    // The reply value with the queue's name made generic.
    let value = |replies: Value, host: &str, queue: &str| {
        replies[0][host].to_string().replace(queue, "<queue>")
    };
    for (command, python, rust) in [
        ("add_consumer", python_queue.as_str(), rust_queue.as_str()),
        ("cancel_consumer", unknown.as_str(), unknown.as_str()),
    ] {
        let theirs = control_queue(&broker, &python_host, command, python).await;
        let ours = control_queue(&broker, &rust_host, command, rust).await;
        assert_eq!(
            value(ours, &rust_host, rust),
            value(theirs, &python_host, python),
            "{command}"
        );
    }
    assert_eq!(
        active_queue_names(&broker, &rust_host).await,
        [rust_queue.as_str()]
    );
    worker.stop().await;
    python_worker.stop();
    for queue in [&python_queue, &rust_queue] {
        cleanup(&broker, queue).await;
    }
}

//! The fault suite's shared parts (`tests/tests/fault_*.rs`, `scripts/fault_suite.sh`,
//! `docs/RELIABILITY.md`): the `fault.tick` messages and who publishes them, the
//! `fault_worker` process, the counts every scenario reports, and control over the brokers
//! (RabbitMQ's `rabbitmqctl stop_app`/`start_app`, a private persistent `redis-server`).
//!
//! Every scenario publishes `fault.tick` events `{"run": <run id>, "seq": <n>}`; the worker's
//! handler records each run with `HINCRBY fault:<run>:runs <seq> 1` on the shared Redis, so
//! "processed" is the set of sequence numbers seen, "duplicated" those seen more than once and
//! "lost" the confirmed ones never seen.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events_celery::{CeleryBackend, TaskMessage};

/// The event every fault scenario publishes: `{"run": "<run id>", "seq": <n>}`.
pub const TICK_EVENT: &str = "fault.tick";

/// How big the scenarios are: `FAULT_SCALE=full` for the full versions
/// (`scripts/fault_suite.sh`), the quick ones (CI) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The quick versions, run by `cargo test`.
    Quick,
    /// The full versions.
    Full,
}

/// The scale chosen by `FAULT_SCALE`.
pub fn scale() -> Scale {
    match std::env::var("FAULT_SCALE").as_deref().map(str::trim) {
        Ok("full") | Ok("FULL") => Scale::Full,
        _ => Scale::Quick,
    }
}

/// `quick` or `full`, by [`scale`].
pub fn sized<T>(quick: T, full: T) -> T {
    match scale() {
        Scale::Quick => quick,
        Scale::Full => full,
    }
}

/// The Redis broker of the fault scenarios: the shared server, but its own database (5), so
/// the short visibility timeouts of the crash scenarios never restore another test's messages
/// (kombu's `unacked` hash is per database). `EVENTS_TEST_FAULT_REDIS_URL` overrides it.
pub fn fault_redis_url() -> String {
    std::env::var("EVENTS_TEST_FAULT_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/5".to_owned())
}

/// Where the handler runs of `run` are counted (a hash: seq → runs), on [`crate::redis_url`].
pub fn runs_key(run: &str) -> String {
    format!("fault:{run}:runs")
}

/// A `fault.tick` task message as `backend` would publish it.
pub fn tick(backend: &CeleryBackend, run: &str, seq: u64) -> TaskMessage {
    let options = backend.config().encode_options(TICK_EVENT);
    TaskMessage::from_payload(
        TICK_EVENT,
        serde_json::json!({"run": run, "seq": seq}),
        &options,
    )
    .expect("a tick encodes")
}

/// What publishing returned: every attempt is either confirmed or failed.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Sequence numbers whose `publish` returned `Ok`.
    pub confirmed: BTreeSet<u64>,
    /// Sequence numbers whose `publish` returned `Err`.
    pub failed: BTreeSet<u64>,
    /// The first error of each kind, for the report.
    pub errors: Vec<String>,
}

impl Published {
    /// How many publishes were attempted.
    pub fn attempted(&self) -> usize {
        self.confirmed.len() + self.failed.len()
    }
}

#[derive(Default)]
struct PublishState {
    next: AtomicU64,
    confirmed_count: AtomicUsize,
    failed_count: AtomicUsize,
    outcome: Mutex<Published>,
}

/// Publishing in the background, `in_flight` publishes at a time, until stopped or done.
pub struct Publishing {
    stop: Arc<AtomicBool>,
    state: Arc<PublishState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publishing {
    /// Starts publishing ticks `0..limit` (or without end) of `run`.
    pub fn start(backend: &CeleryBackend, run: &str, in_flight: usize, limit: Option<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(PublishState::default());
        let tasks = (0..in_flight.max(1))
            .map(|_| {
                let (backend, run) = (backend.clone(), run.to_owned());
                let (stop, state) = (Arc::clone(&stop), Arc::clone(&state));
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let seq = state.next.fetch_add(1, Ordering::SeqCst);
                        if limit.is_some_and(|limit| seq >= limit) {
                            break;
                        }
                        let result = backend.send(tick(&backend, &run, seq)).await;
                        let ok = result.is_ok();
                        {
                            let mut outcome = state.outcome.lock().expect("not poisoned");
                            match result {
                                Ok(_) => {
                                    outcome.confirmed.insert(seq);
                                    state.confirmed_count.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(error) => {
                                    let text = error.to_string();
                                    let kind =
                                        text.split(':').next().unwrap_or_default().to_owned();
                                    if !outcome.errors.iter().any(|e| e.starts_with(&kind)) {
                                        outcome.errors.push(text);
                                    }
                                    outcome.failed.insert(seq);
                                    state.failed_count.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        if !ok {
                            // As an application would: a short pause before the next try.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Self { stop, state, tasks }
    }

    /// Publishes returned `Ok` so far.
    pub fn confirmed(&self) -> usize {
        self.state.confirmed_count.load(Ordering::SeqCst)
    }

    /// Publishes returned `Err` so far.
    pub fn failed(&self) -> usize {
        self.state.failed_count.load(Ordering::SeqCst)
    }

    /// Waits for the publishes in flight (or all of them, with a limit) and returns the
    /// outcome.
    pub async fn finish(self, stop: bool) -> Published {
        if stop {
            self.stop.store(true, Ordering::SeqCst);
        }
        for task in self.tasks {
            task.await.expect("a publishing task panicked");
        }
        self.state.outcome.lock().expect("not poisoned").clone()
    }
}

/// Publishes ticks `0..count` of `run`, `in_flight` at a time.
pub async fn publish_ticks(
    backend: &CeleryBackend,
    run: &str,
    count: u64,
    in_flight: usize,
) -> Published {
    Publishing::start(backend, run, in_flight, Some(count))
        .finish(false)
        .await
}

/// A connection to the Redis the runs are recorded on, with room for big replies.
async fn records() -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    redis::Client::open(crate::redis_url())
        .expect("valid redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis is running on 127.0.0.1:6379 (scripts/services.sh starts it)")
}

/// The handler runs of `run` recorded by `fault_worker`s: seq → runs.
pub async fn rust_runs(run: &str) -> HashMap<u64, u64> {
    let raw: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(runs_key(run))
        .query_async(&mut records().await)
        .await
        .expect("HGETALL");
    raw.into_iter()
        .map(|(seq, n)| (seq.parse().expect("a seq"), n))
        .collect()
}

/// How many distinct messages of `run` the `fault_worker`s processed (cheap: `HLEN`).
pub async fn rust_count(run: &str) -> usize {
    redis::cmd("HLEN")
        .arg(runs_key(run))
        .query_async(&mut records().await)
        .await
        .expect("HLEN")
}

/// The runs of `run` a Python Celery worker (`examples/python/domain_events_app.py`) recorded
/// on `key`: seq → runs.
pub async fn python_runs(key: &str, run: &str) -> HashMap<u64, u64> {
    let mut counts = HashMap::new();
    for record in crate::task_records(key).await {
        if record["payload"]["run"] == run {
            let seq = record["payload"]["seq"].as_u64().expect("a seq");
            *counts.entry(seq).or_insert(0) += 1;
        }
    }
    counts
}

/// Adds `more` runs into `into`.
pub fn merge(into: &mut HashMap<u64, u64>, more: &HashMap<u64, u64>) {
    for (seq, n) in more {
        *into.entry(*seq).or_insert(0) += n;
    }
}

/// Waits until every confirmed message of `run` has been processed (by `fault_worker`s, and
/// by the Python worker recording on `python_key`), for at most `limit`; returns the runs
/// seen then.
pub async fn wait_processed(
    run: &str,
    python_key: Option<&str>,
    confirmed: &BTreeSet<u64>,
    limit: Duration,
) -> HashMap<u64, u64> {
    let deadline = Instant::now() + limit;
    loop {
        // Counting first (cheap), then the full check once the count is there.
        let mut count = rust_count(run).await;
        if let Some(key) = python_key {
            count += python_runs(key, run).await.len();
        }
        if count >= confirmed.len() || Instant::now() >= deadline {
            let runs = all_runs(run, python_key).await;
            if confirmed.iter().all(|seq| runs.contains_key(seq)) || Instant::now() >= deadline {
                return runs;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every recorded run of `run`, Rust and (with a key) Python.
pub async fn all_runs(run: &str, python_key: Option<&str>) -> HashMap<u64, u64> {
    let mut runs = rust_runs(run).await;
    if let Some(key) = python_key {
        merge(&mut runs, &python_runs(key, run).await);
    }
    runs
}

/// Deletes what `run` recorded.
pub async fn forget_run(run: &str, python_key: Option<&str>) {
    let mut connection = crate::redis().await;
    let mut del = redis::cmd("DEL");
    del.arg(runs_key(run));
    if let Some(key) = python_key {
        del.arg(key);
    }
    let _: redis::RedisResult<()> = del.query_async(&mut connection).await;
}

/// One row of the reliability table.
#[derive(Debug, Clone)]
pub struct Counts {
    /// The scenario (`worker crash, Redis`).
    pub scenario: String,
    /// What was done (`200 msgs, 50 ms handler, kill -9 at 25 %`).
    pub what: String,
    /// Publishes attempted.
    pub published: usize,
    /// Publishes that returned `Ok`.
    pub confirmed: usize,
    /// Publishes that returned `Err` (reported to the publisher).
    pub failed: usize,
    /// Distinct messages whose handler ran.
    pub processed: usize,
    /// Confirmed messages never processed: must be 0.
    pub lost: usize,
    /// Messages processed more than once.
    pub duplicated: usize,
    /// Failed publishes whose message was processed anyway (the broker had it; allowed).
    pub failed_but_processed: usize,
    /// The command that reproduces the row.
    pub command: String,
}

impl Counts {
    /// Counts `published` against the handler runs `runs`.
    pub fn new(
        scenario: &str,
        what: &str,
        published: &Published,
        runs: &HashMap<u64, u64>,
        command: &str,
    ) -> Self {
        Self {
            scenario: scenario.to_owned(),
            what: what.to_owned(),
            published: published.attempted(),
            confirmed: published.confirmed.len(),
            failed: published.failed.len(),
            processed: runs.len(),
            lost: published
                .confirmed
                .iter()
                .filter(|seq| !runs.contains_key(seq))
                .count(),
            duplicated: runs.values().filter(|&&n| n > 1).count(),
            failed_but_processed: published
                .failed
                .iter()
                .filter(|seq| runs.contains_key(seq))
                .count(),
            command: command.to_owned(),
        }
    }

    /// The markdown row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | `{}` |",
            self.scenario,
            self.what,
            self.published,
            self.confirmed,
            if self.failed_but_processed > 0 {
                format!(
                    "{} ({} of them processed anyway)",
                    self.failed, self.failed_but_processed
                )
            } else {
                self.failed.to_string()
            },
            self.processed,
            self.lost,
            self.duplicated,
            self.command
        )
    }

    /// Prints the row, appends it to `$FAULT_REPORT` when set, and asserts that nothing
    /// confirmed was lost.
    pub fn report(&self) {
        let row = self.row();
        eprintln!("{row}");
        if let Some(path) = std::env::var_os("FAULT_REPORT").filter(|p| !p.is_empty()) {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open FAULT_REPORT");
            writeln!(file, "{row}").expect("write FAULT_REPORT");
        }
        assert_eq!(self.lost, 0, "confirmed messages were lost: {row}");
        assert!(self.confirmed > 0, "nothing was confirmed: {row}");
    }
}

/// The reproduce command of a test in `tests/tests/<file>.rs`.
pub fn command(file: &str, test: &str) -> String {
    let scale = match scale() {
        Scale::Quick => "",
        Scale::Full => "FAULT_SCALE=full ",
    };
    format!("{scale}cargo test -p tests --test {file} -- --exact {test}")
}

/// How to start a `fault_worker` process.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The broker URL.
    pub broker_url: String,
    /// The queue it consumes.
    pub queue: String,
    /// How long the handler sleeps before recording (a slow handler).
    pub sleep: Duration,
    /// Messages run at once.
    pub concurrency: usize,
    /// Messages fetched ahead (RabbitMQ prefetch; Redis window).
    pub prefetch: u16,
    /// Redis: the visibility timeout.
    pub visibility_timeout: Option<Duration>,
    /// Redis: how often to restore messages past it.
    pub restore_interval: Option<Duration>,
    /// The longest wait between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
    /// `WorkerConfig::max_message_bytes`, when not the default.
    pub max_message_bytes: Option<usize>,
}

impl WorkerSpec {
    /// A worker for `queue` on `broker_url`: no sleep, concurrency 8, prefetch 64,
    /// reconnecting at least every second.
    pub fn new(broker_url: &str, queue: &str) -> Self {
        Self {
            broker_url: broker_url.to_owned(),
            queue: queue.to_owned(),
            sleep: Duration::ZERO,
            concurrency: 8,
            prefetch: 64,
            visibility_timeout: None,
            restore_interval: None,
            reconnect_max_delay: Duration::from_secs(1),
            env: Vec::new(),
            max_message_bytes: None,
        }
    }
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

/// A `fault_worker` process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    process: crate::LoggedChild,
}

impl WorkerProcess {
    /// Starts `exe` (the test's `env!("CARGO_BIN_EXE_fault_worker")`), logging to a file.
    pub fn start(exe: &str, spec: &WorkerSpec) -> Self {
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let log = std::env::temp_dir().join(format!("{}.{n}.fault-worker.log", spec.queue));
        let mut command = Command::new(exe);
        command
            .env("FAULT_BROKER_URL", &spec.broker_url)
            .env("FAULT_QUEUE", &spec.queue)
            .env("FAULT_RECORD_URL", crate::redis_url())
            .env("FAULT_SLEEP_MS", spec.sleep.as_millis().to_string())
            .env("FAULT_CONCURRENCY", spec.concurrency.to_string())
            .env("FAULT_PREFETCH", spec.prefetch.to_string())
            .env(
                "FAULT_RECONNECT_MAX_MS",
                spec.reconnect_max_delay.as_millis().to_string(),
            );
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(v) = spec.visibility_timeout {
            command.env("FAULT_VISIBILITY_MS", v.as_millis().to_string());
        }
        if let Some(r) = spec.restore_interval {
            command.env("FAULT_RESTORE_MS", r.as_millis().to_string());
        }
        if let Some(limit) = spec.max_message_bytes {
            command.env("FAULT_MAX_BYTES", limit.to_string());
        }
        Self {
            process: crate::LoggedChild::spawn("fault_worker", &mut command, log),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Panics with its output if it has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Its memory: see [`process_memory`].
    pub fn memory(&self) -> (u64, u64) {
        process_memory(self.id())
    }

    /// `kill -9`: the worker dies with whatever it holds.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM (a graceful shutdown), SIGKILL after `grace`; returns whether it exited by
    /// itself, successfully.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        self.process.terminate(grace)
    }
}

/// The memory of process `pid` from `/proc/<pid>/status`: (`VmRSS`, `VmHWM` — its peak
/// resident size), in bytes.
pub fn process_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/<pid>/status of the worker (Linux only)");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `rabbitmqctl` with `args`; panics with its output if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (RabbitMQ must run on this machine)");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// RabbitMQ stopped with `rabbitmqctl stop_app` (durable queues and persistent messages are
/// kept); started again by [`end`](Self::end), or when dropped — so a failing test never
/// leaves the shared broker down.
#[derive(Debug)]
pub struct RabbitOutage {
    down: bool,
}

impl RabbitOutage {
    /// Stops the RabbitMQ application.
    pub fn begin() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self { down: true }
    }

    /// Starts it again and waits until it is up.
    pub fn end(mut self) {
        self.start();
    }

    fn start(&mut self) {
        if self.down {
            self.down = false;
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup", "--timeout", "120"]);
            wait_port(5672, Duration::from_secs(60));
        }
    }
}

impl Drop for RabbitOutage {
    fn drop(&mut self) {
        self.start();
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !port_open(port) {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of the test's own, on a free port, persisting every write before it
/// replies (`--appendonly yes --appendfsync always`), so it can be restarted without losing
/// what it confirmed. (The shared Redis on 6379 runs without persistence: restarting it
/// would drop every queued message by design.) Killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// Starts one that requires `password` (`--requirepass`).
    pub fn start_with_password(password: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "fault-redis-{port}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("create the redis directory");
        let mut redis = Self {
            port,
            dir,
            password: password.map(str::to_owned),
            child: None,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (it must be installed)");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(20));
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL (database 0).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// `redis-cli shutdown` (its own command: the append-only file is flushed), then waits
    /// for the process to exit.
    pub fn shutdown(&mut self) {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let status = command.arg("shutdown").output().expect("run redis-cli");
        let _ = status;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("redis-server on port {} did not shut down", self.port);
        }
    }

    /// Starts it again on the same port and directory (it reloads the append-only file).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "shut it down first");
        self.launch();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes what a queue left on the Redis at `url` (lists, priority lists, bindings, its
/// dead letters and postponed messages).
pub async fn cleanup_redis_queue_at(url: &str, queue: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut keys: Vec<String> = vec![
        queue.to_owned(),
        format!("{queue}.dead_letter"),
        format!("_kombu.binding.{queue}"),
        format!("_kombu.binding_permanent.{queue}"),
        format!("_events.delayed.{queue}"),
    ];
    for step in ["3", "6", "9"] {
        keys.push(format!("{queue}\x06\x16{step}"));
        keys.push(format!("_events.delayed.{queue}\x06\x16{step}"));
    }
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await;
}

/// The reasons of the dead letters of `queue` on the broker at `url`, oldest first, left in
/// place (on RabbitMQ they are peeked and returned to the queue).
pub async fn dead_letter_reasons(url: &str, queue: &str) -> Option<Vec<String>> {
    let dead = format!("{queue}.dead_letter");
    if url.starts_with("redis") {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&dead)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .ok()?;
        return Some(
            raw.iter()
                .map(|r| {
                    serde_json::from_str::<serde_json::Value>(r).unwrap()["reason"].to_string()
                })
                .collect(),
        );
    }
    let (connection, channel) = crate::amqp_channel().await;
    let mut reasons = Vec::new();
    while let Ok(Some(m)) = channel
        .basic_get(
            dead.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
    {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        reasons.push(match headers.inner().get("x-dead-letter-reason") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).into_owned()
            }
            other => format!("{other:?}"),
        });
    }
    // Closing without acknowledging returns them: the next look sees them all.
    let _ = connection.close(200, "peeked".into()).await;
    Some(reasons)
}

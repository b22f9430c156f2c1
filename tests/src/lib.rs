//! Integration, UI (trybuild) and interop tests for the domain-events workspace, and what they
//! share: broker URLs, unique queue names, raw broker access.

pub mod amqp_raw;
pub mod fault;
pub mod outbox;
pub mod proxy;

use std::time::Duration;

/// The RabbitMQ the tests use (`EVENTS_TEST_AMQP_URL`, default the local one).
pub fn amqp_url() -> String {
    std::env::var("EVENTS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".to_owned())
}

/// The Redis the tests use (`EVENTS_TEST_REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("EVENTS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A queue name no other test (or earlier run) uses.
pub fn unique_queue(what: &str) -> String {
    format!(
        "test_{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Raw Redis access for checking what reached the broker.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("valid redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running on 127.0.0.1:6379 (scripts/services.sh starts it)")
}

/// Raw AMQP access for checking what reached the broker.
pub async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(
        &amqp_url().replace("5672//", "5672/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ is running on 127.0.0.1:5672 (scripts/services.sh starts it)");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// How long a test's own RabbitMQ clean-up may wait for the broker: a clean-up that hangs
/// fails its test by name instead of stalling the suite.
const CLEANUP_LIMIT: Duration = Duration::from_secs(20);

/// `step`, or a panic naming it if RabbitMQ has not answered within [`CLEANUP_LIMIT`].
async fn bounded<T>(step: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CLEANUP_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("RabbitMQ did not answer {step} within {CLEANUP_LIMIT:?}"))
}

/// Deletes a RabbitMQ queue (tests clean up after themselves).
pub async fn delete_amqp_queue(channel: &lapin::Channel, queue: &str) {
    let deleting =
        channel.queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default());
    let _ = bounded("queue.delete", deleting).await;
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The workspace root (where `.venv`, `examples/` and `scripts/` are).
pub fn workspace_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Runs `examples/python/send_events.py` with `args` (off the async threads); panics with its
/// error output if it fails. Returns what it printed: a line per message sent.
pub async fn send_events_py<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = std::process::Command::new(python());
    command
        .arg(workspace_dir().join("examples/python/send_events.py"))
        .args(args);
    let output = tokio::task::spawn_blocking(move || output_within(command, PYTHON_LIMIT))
        .await
        .expect("the blocking pool runs it");
    assert!(
        output.status.success(),
        "send_events.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("send_events.py prints UTF-8")
}

/// Runs `command` to completion and returns what it printed, killing it and panicking (naming
/// it, with what it printed so far) if it has not exited within `limit`: a child process that
/// hangs fails its test instead of stalling the suite.
pub fn output_within(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let what = format!("{command:?}");
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{what} did not exit within {limit:?} (killed); it printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// The longest a Python helper script or Celery command line may run in a test.
pub const PYTHON_LIMIT: Duration = Duration::from_secs(120);

/// The Python that has Celery: `EVENTS_TEST_PYTHON`, default `<workspace>/.venv/bin/python`.
///
/// Panics — the interop tests fail, they never skip — when it is missing or has no Celery,
/// with a message that says to run `scripts/services.sh`.
pub fn python() -> std::path::PathBuf {
    let path = std::env::var_os("EVENTS_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join(".venv/bin/python"));
    let fix = "run scripts/services.sh (it installs celery[redis]==5.7.0 into ./.venv), or set \
               EVENTS_TEST_PYTHON to a Python that has Celery 5";
    assert!(
        path.exists(),
        "no Python for the Celery interop tests at {}: {fix}",
        path.display()
    );
    let check = std::process::Command::new(&path)
        .args(["-c", "import celery, redis"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {fix}", path.display()));
    assert!(
        check.status.success(),
        "{} cannot import celery and redis ({}): {fix}",
        path.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    path
}

/// A real Python Celery worker running `examples/python/domain_events_app.py` on one queue,
/// stopped (SIGTERM, then SIGKILL) when dropped, so a failing test never leaves one behind.
#[derive(Debug)]
pub struct PythonWorker {
    process: LoggedChild,
}

/// A child process whose output goes to a log file: checked, killed or stopped by the tests,
/// killed and reaped when dropped (its log kept if the test is failing).
#[derive(Debug)]
pub struct LoggedChild {
    name: &'static str,
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl LoggedChild {
    /// Starts `command` with its stdout and stderr going to `log`.
    pub fn spawn(
        name: &'static str,
        command: &mut std::process::Command,
        log: std::path::PathBuf,
    ) -> Self {
        let out = std::fs::File::create(&log).expect("create the process log");
        let err = out.try_clone().expect("clone the log file");
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name,
            child: Some(child),
            log,
        }
    }

    /// The process id (0 once it is gone).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// `kill -9`: it dies with whatever it holds.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful shutdown), SIGKILL after `grace`; returns whether it exited by
    /// itself, successfully.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{} log kept at {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// How to start a [`PythonWorker`].
#[derive(Debug, Clone)]
pub struct PythonWorkerSpec {
    /// The broker URL (`CELERY_BROKER_URL`).
    pub broker_url: String,
    /// The only queue it consumes (`-Q`).
    pub queue: String,
    /// The Redis list each task run is recorded on (`EVENTS_RESULT_KEY`).
    pub result_key: String,
    /// The event names to register tasks for (`EVENTS_TASK_NAMES`).
    pub events: Vec<String>,
    /// `task_queue_max_priority` (`EVENTS_CELERY_QUEUE_MAX_PRIORITY`).
    pub queue_max_priority: Option<u8>,
    /// `--prefetch-multiplier` (Celery's default is 4).
    pub prefetch_multiplier: Option<u32>,
    /// `task_acks_late` (`EVENTS_ACKS_LATE=1`): acknowledge after the task ran.
    pub acks_late: bool,
    /// How long each task sleeps before recording its run (`EVENTS_TASK_SLEEP`).
    pub task_sleep: Option<Duration>,
    /// Redis: kombu's `visibility_timeout`, with the restore sweep every second
    /// (`EVENTS_VISIBILITY_TIMEOUT`).
    pub visibility_timeout: Option<Duration>,
    /// Answer remote control (`celery inspect`, Flower); off by default.
    pub remote_control: bool,
}

impl PythonWorkerSpec {
    /// A worker for `queue` on `broker_url` recording runs to `result_key`.
    pub fn new(broker_url: &str, queue: &str, result_key: &str) -> Self {
        Self {
            broker_url: broker_url.to_owned(),
            queue: queue.to_owned(),
            result_key: result_key.to_owned(),
            events: Vec::new(),
            queue_max_priority: None,
            prefetch_multiplier: None,
            acks_late: false,
            task_sleep: None,
            visibility_timeout: None,
            remote_control: false,
        }
    }

    /// Registers tasks for these events.
    pub fn events<I: IntoIterator<Item = S>, S: Into<String>>(mut self, events: I) -> Self {
        self.events = events.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `task_queue_max_priority`.
    pub fn queue_max_priority(mut self, max: u8) -> Self {
        self.queue_max_priority = Some(max);
        self
    }

    /// Sets `--prefetch-multiplier`.
    pub fn prefetch_multiplier(mut self, n: u32) -> Self {
        self.prefetch_multiplier = Some(n);
        self
    }

    /// Sets `task_acks_late`: a message stays unacknowledged until its task ran.
    pub fn acks_late(mut self) -> Self {
        self.acks_late = true;
        self
    }

    /// Makes each task sleep this long before recording its run.
    pub fn task_sleep(mut self, sleep: Duration) -> Self {
        self.task_sleep = Some(sleep);
        self
    }

    /// Answers remote control (`celery inspect`, Flower's worker list).
    pub fn remote_control(mut self) -> Self {
        self.remote_control = true;
        self
    }

    /// Redis: sets kombu's `visibility_timeout` (and a restore sweep every second).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Starts the worker.
    pub fn start(self) -> PythonWorker {
        PythonWorker::start(self)
    }
}

impl PythonWorker {
    /// Starts `python -m celery -A domain_events_app worker --pool solo` on the spec's queue,
    /// its output going to a log file ([`log`](Self::log)).
    pub fn start(spec: PythonWorkerSpec) -> Self {
        let python = python();
        let log = std::env::temp_dir().join(format!("{}.celery-worker.log", spec.queue));
        let mut command = std::process::Command::new(python);
        command
            .args(["-m", "celery", "-A", "domain_events_app", "worker"])
            .args(["--pool", "solo", "--concurrency", "1"])
            .args(["-Q", &spec.queue])
            .args(["-n", &format!("{}@%h", spec.queue)])
            .args([
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ])
            .args(["--loglevel", "INFO"])
            .current_dir(workspace_dir().join("examples/python"))
            .env("CELERY_BROKER_URL", &spec.broker_url)
            .env("EVENTS_RESULT_KEY", &spec.result_key)
            .env("EVENTS_RESULT_URL", redis_url())
            .env("EVENTS_TASK_NAMES", spec.events.join(","))
            .env(
                "EVENTS_REMOTE_CONTROL",
                if spec.remote_control { "1" } else { "0" },
            )
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("EVENTS_CELERY_QUEUE_MAX_PRIORITY");
        if let Some(max) = spec.queue_max_priority {
            command.env("EVENTS_CELERY_QUEUE_MAX_PRIORITY", max.to_string());
        }
        if let Some(n) = spec.prefetch_multiplier {
            command.args(["--prefetch-multiplier", &n.to_string()]);
        }
        command
            .env_remove("EVENTS_ACKS_LATE")
            .env_remove("EVENTS_TASK_SLEEP")
            .env_remove("EVENTS_VISIBILITY_TIMEOUT");
        if spec.acks_late {
            command.env("EVENTS_ACKS_LATE", "1");
        }
        if let Some(sleep) = spec.task_sleep {
            command.env("EVENTS_TASK_SLEEP", sleep.as_secs_f64().to_string());
        }
        if let Some(timeout) = spec.visibility_timeout {
            command.env(
                "EVENTS_VISIBILITY_TIMEOUT",
                timeout.as_secs_f64().to_string(),
            );
        }
        Self {
            process: LoggedChild::spawn("the Python Celery worker", &mut command, log),
        }
    }

    /// The worker's output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Panics with the worker's output if it has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Waits until Celery logs `ready.` (it consumes from then on); panics with the worker's
    /// output if it exits or is not ready within 60 s.
    pub fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.log().contains(" ready.") {
            self.assert_running();
            assert!(
                std::time::Instant::now() < deadline,
                "the Python Celery worker was not ready within 60 s; its output:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the worker with SIGKILL at once, as a crash would: no warm shutdown, so what it
    /// holds unacknowledged stays in kombu's `unacked` hash.
    pub fn kill(&mut self) {
        self.process.kill9();
    }

    /// Stops the worker: SIGTERM (Celery's warm shutdown), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        // A warm shutdown first; the process's own drop then removes the log.
        self.stop();
    }
}

/// The records the Python tasks pushed onto `key` (each a JSON object), parsed with the
/// codec's `Json` (so big integers stay exact and keys keep Python's order).
pub async fn task_records(key: &str) -> Vec<events_celery::codec::Json> {
    let mut connection = redis().await;
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut connection)
        .await
        .expect("LRANGE");
    raw.iter()
        .map(|r| events_celery::codec::Json::parse(r).expect("a task record is JSON"))
        .collect()
}

/// Deletes what a Celery queue leaves on Redis (its lists, priority lists and bindings) and
/// the given extra keys.
pub async fn cleanup_redis_queue(queue: &str, extra_keys: &[&str]) {
    let mut connection = redis().await;
    let mut keys: Vec<String> = vec![
        queue.to_owned(),
        format!("_kombu.binding.{queue}"),
        format!("_kombu.binding_permanent.{queue}"),
    ];
    keys.extend(["3", "6", "9"].map(|step| format!("{queue}\x06\x16{step}")));
    keys.extend(extra_keys.iter().map(|k| (*k).to_owned()));
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await;
}

/// Deletes a RabbitMQ queue and the direct exchange Celery declares under the same name.
/// Best effort: does nothing when RabbitMQ cannot be reached right now.
pub async fn cleanup_amqp_queue(queue: &str) {
    let Ok(connection) = lapin::Connection::connect(
        &amqp_url().replace("5672//", "5672/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    delete_amqp_queue(&channel, queue).await;
    let deleting = channel.exchange_delete(
        queue.into(),
        lapin::options::ExchangeDeleteOptions::default(),
    );
    let _ = bounded("exchange.delete", deleting).await;
    let _ = bounded("connection.close", connection.close(200, "done".into())).await;
}

/// The longest [`InProcessWorker::stop`] waits: the default grace period (30 s) and then
/// some.
pub const STOP_LIMIT: Duration = Duration::from_secs(90);

/// A [`Worker`](events_celery::Worker) running on the current tokio runtime until
/// [`stop`](Self::stop).
pub struct InProcessWorker {
    /// Its live counters.
    pub stats: std::sync::Arc<events_celery::WorkerStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<
        Result<std::sync::Arc<events_celery::WorkerStats>, events_celery::CeleryError>,
    >,
}

impl InProcessWorker {
    /// Builds the worker and spawns it.
    pub fn start(config: events_celery::WorkerConfig) -> Self {
        let worker = events_celery::Worker::new(config).unwrap();
        let stats = worker.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        Self { stats, stop, done }
    }

    /// Whether it has returned (it should not before [`stop`](Self::stop)).
    pub fn is_finished(&self) -> bool {
        self.done.is_finished()
    }

    /// Stops it and waits for it: its final counters. Panics if it failed, or if it has not
    /// returned within [`STOP_LIMIT`] (a shutdown that hangs fails its test, not the whole
    /// suite's time budget).
    pub async fn stop(self) -> std::sync::Arc<events_celery::WorkerStats> {
        let _ = self.stop.send(());
        let stats = std::sync::Arc::clone(&self.stats);
        match tokio::time::timeout(STOP_LIMIT, self.done).await {
            Ok(done) => done.unwrap().unwrap(),
            Err(_) => panic!(
                "the worker did not stop within {STOP_LIMIT:?} of being asked to (a shutdown \
                 hang); its counters: {:?}",
                stats.snapshot()
            ),
        }
    }
}

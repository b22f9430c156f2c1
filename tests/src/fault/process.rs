//! Process control: starting a `fault_worker` process with its log captured to a file, killing or
//! terminating it, and reading a process's memory.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

//! The fault suite's shared parts (`tests/tests/fault_*.rs`, `scripts/fault_suite.sh`,
//! `docs/RELIABILITY.md`): the `fault.tick` messages and who publishes them, the
//! `fault_worker` process, the counts every scenario reports, and control over the brokers
//! (RabbitMQ's `rabbitmqctl stop_app`/`start_app`, a private persistent `redis-server`).
//!
//! Every scenario publishes `fault.tick` events `{"run": <run id>, "seq": <n>}`; the worker's
//! handler records each run with `HINCRBY fault:<run>:runs <seq> 1` on the shared Redis, so
//! "processed" is the set of sequence numbers seen, "duplicated" those seen more than once and
//! "lost" the confirmed ones never seen.
//!
//! The parts, by concern: [`publish`](Publishing) ticks, count what the workers [`records`](rust_runs)
//! recorded, [`report`](Counts) a row of the reliability table, control worker
//! [`process`](WorkerProcess)es and brokers ([`RabbitOutage`], [`PrivateRedis`], an unreachable
//! one: [`Refusing`]), and inspect
//! [`queues`](dead_letter_reasons).

mod outage;
mod process;
mod publish;
mod queues;
mod records;
mod report;
mod unreachable;

pub use outage::{PrivateRedis, RabbitOutage, rabbitmqctl};
pub use process::{WorkerProcess, WorkerSpec, process_memory};
pub use publish::{Published, Publishing, publish_ticks, tick};
pub use queues::{cleanup_redis_queue_at, dead_letter_reasons};
pub use records::{
    all_runs, forget_run, merge, python_runs, runs_key, rust_count, rust_runs, wait_processed,
};
pub use report::{Counts, command};
pub use unreachable::{Refusing, most_attempts};

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

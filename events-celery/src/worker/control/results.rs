//! Task results as Celery's Redis result backend stores them, as an observer of the worker's
//! events: `SUCCESS` when every handler completed, `FAILURE` naming the handlers that failed
//! for good (a `RuntimeError` Python's `AsyncResult.get()` raises), `REVOKED` for revoked and
//! expired tasks, `STARTED` with track-started. Written by a background task through a bounded
//! queue, many per round trip: a slow or unreachable result store never slows the worker
//! (the writer retries with backoff; results that do not fit or cannot be stored are dropped
//! and counted in `WorkerStats::results_dropped`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::plane::{CLOSE_LIMIT, failure_text};
use crate::backoff::Backoff;
use crate::broker::BrokerUrl;
use crate::broker::control::ResultStore;
use crate::codec::{
    DEFAULT_RESULT_EXPIRES_SECS, ExceptionInfo, RedisResultWrite, ResultMeta, TaskMessage,
};
use crate::worker::events::{WorkerEvent, WorkerObserver, WorkerStats};

enum Job {
    Write(RedisResultWrite),
    /// Everything queued before it has been written (or given up).
    Flush(oneshot::Sender<()>),
}

/// Results written in one round trip at most.
const ROUND: usize = 1024;

/// How long the results queued at shutdown may take to be written.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The longest wait between attempts while the result backend cannot be reached.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The results observer.
pub(crate) struct Results {
    queue: mpsc::Sender<Job>,
    track_started: bool,
    hostname: String,
    /// Counts results dropped (`results_dropped`).
    stats: Arc<WorkerStats>,
    writer: Arc<Writer>,
}

/// What the observer shares with the writer task.
#[derive(Default)]
struct Writer {
    /// Results in the queue.
    queued: AtomicU64,
    /// Results the writer has taken from the queue and not yet written or given up.
    in_flight: AtomicU64,
    /// The worker is stopping: stop waiting between attempts.
    stopping: Notify,
}

impl Results {
    /// Starts the writer for the store at `url`; results not stored are counted in `stats`.
    pub(crate) fn start(
        url: BrokerUrl,
        track_started: bool,
        hostname: String,
        capacity: usize,
        stats: Arc<WorkerStats>,
    ) -> (Self, JoinHandle<()>) {
        Self::start_with(
            ResultStore::new(url),
            track_started,
            hostname,
            capacity,
            stats,
        )
    }

    /// [`start`](Self::start) with the store given.
    pub(super) fn start_with(
        store: ResultStore,
        track_started: bool,
        hostname: String,
        capacity: usize,
        stats: Arc<WorkerStats>,
    ) -> (Self, JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel::<Job>(capacity.max(16));
        let writer = Arc::new(Writer::default());
        let task = tokio::spawn(write_loop(
            store,
            receiver,
            Arc::clone(&stats),
            Arc::clone(&writer),
        ));
        (
            Self {
                queue,
                track_started,
                hostname,
                stats,
                writer,
            },
            task,
        )
    }

    fn store(&self, task: &TaskMessage, meta: ResultMeta) {
        if task.headers.ignore_result == Some(true) {
            return;
        }
        let meta = ResultMeta {
            parent_id: task.headers.parent_id.clone(),
            group_id: task.headers.group.clone(),
            ..meta
        };
        let Ok(write) = meta.redis_write(DEFAULT_RESULT_EXPIRES_SECS) else {
            self.stats.results_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.writer.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(Job::Write(write)).is_err() {
            self.writer.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.results_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits ([`FLUSH_LIMIT`] at most, whatever the result backend does) for the results
    /// queued so far to be written, then stops the writer; results not written by then are
    /// counted as dropped.
    pub(crate) async fn finish(&self, task: JoinHandle<()>) {
        let deadline = Instant::now() + FLUSH_LIMIT;
        // A writer waiting to retry an unreachable backend gives up instead.
        self.writer.stopping.notify_one();
        let (done, flushed) = oneshot::channel();
        let sent = tokio::time::timeout_at(deadline, self.queue.send(Job::Flush(done))).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = tokio::time::timeout_at(deadline, flushed).await;
        }
        task.abort();
        let _ = tokio::time::timeout(CLOSE_LIMIT, task).await;
        let unwritten = self.writer.queued.swap(0, Ordering::Relaxed)
            + self.writer.in_flight.swap(0, Ordering::Relaxed);
        self.stats
            .results_dropped
            .fetch_add(unwritten, Ordering::Relaxed);
        let dropped = self.stats.results_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "task results not stored: the result backend could not take them (see the \
                 warnings before; `AsyncResult.get()` waits for these in vain)"
            );
        }
    }
}

/// Writes what the observer queues, a round trip per batch. When the store fails, that batch
/// is dropped and counted, and the next attempt waits for the backoff (results made meanwhile
/// wait in the queue, and are dropped when it is full): one reconnection loop, not one attempt
/// per result.
async fn write_loop(
    store: ResultStore,
    mut receiver: mpsc::Receiver<Job>,
    stats: Arc<WorkerStats>,
    writer: Arc<Writer>,
) {
    let mut backoff = Backoff::reconnect(RETRY_MAX);
    let mut failures = 0u32;
    let mut stopping = false;
    let mut jobs = Vec::with_capacity(ROUND);
    let mut writes = Vec::with_capacity(ROUND);
    let mut flushed = Vec::new();
    while receiver.recv_many(&mut jobs, ROUND).await > 0 {
        for job in jobs.drain(..) {
            match job {
                Job::Write(write) => writes.push(write),
                Job::Flush(done) => flushed.push(done),
            }
        }
        if !writes.is_empty() {
            let count = writes.len() as u64;
            writer.queued.fetch_sub(count, Ordering::Relaxed);
            // Stopping while the backend is unreachable: give up at once.
            let result = if stopping && failures > 0 {
                Err(None)
            } else {
                writer.in_flight.store(count, Ordering::Relaxed);
                let result = store.write_many(&writes).await.map_err(Some);
                writer.in_flight.store(0, Ordering::Relaxed);
                result
            };
            writes.clear();
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("task results are stored again");
                    }
                    failures = 0;
                    backoff.reset();
                }
                Err(error) => {
                    stats.results_dropped.fetch_add(count, Ordering::Relaxed);
                    if let Some(error) = error {
                        if failures == 0 {
                            tracing::warn!(
                                %error,
                                "cannot store task results; retrying with backoff, results \
                                 wait in the queue meanwhile (tasks still run)"
                            );
                        }
                        failures = failures.saturating_add(1);
                        for done in flushed.drain(..) {
                            let _ = done.send(());
                        }
                        if !stopping {
                            tokio::select! {
                                () = tokio::time::sleep(backoff.step()) => {}
                                () = writer.stopping.notified() => stopping = true,
                            }
                        }
                    }
                }
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

impl WorkerObserver for Results {
    fn on_event(&self, event: &WorkerEvent<'_>) {
        let now = || Utc::now().fixed_offset();
        match *event {
            WorkerEvent::Started { task, .. } if self.track_started => {
                self.store(
                    task,
                    ResultMeta::started(&task.id, std::process::id(), &self.hostname),
                );
            }
            WorkerEvent::Succeeded { task, .. } => {
                self.store(
                    task,
                    ResultMeta::success(&task.id, crate::codec::Json::Null, now()),
                );
            }
            WorkerEvent::Failed { task, failures, .. } => {
                let exhausted: Vec<_> = failures
                    .iter()
                    .filter(|f| !f.will_retry)
                    .map(|f| &f.failure)
                    .collect();
                if exhausted.is_empty() {
                    return;
                }
                let names: Vec<&str> = exhausted.iter().map(|f| f.handler()).collect();
                let exception = ExceptionInfo::builtin(
                    "RuntimeError",
                    format!("handlers failed: {}", names.join(", ")),
                );
                let traceback = failure_text(exhausted.iter().copied());
                self.store(
                    task,
                    ResultMeta::failure(&task.id, &exception, Some(traceback), now()),
                );
            }
            WorkerEvent::Rejected {
                task: Some(task),
                handler: None,
                reason,
                ..
            } => {
                let exception = ExceptionInfo::builtin("RuntimeError", reason);
                self.store(task, ResultMeta::failure(&task.id, &exception, None, now()));
            }
            WorkerEvent::Revoked { task, .. } => {
                self.store(task, ResultMeta::revoked(&task.id, "revoked", now()));
            }
            WorkerEvent::Expired { task, .. } => {
                self.store(task, ResultMeta::revoked(&task.id, "expired", now()));
            }
            _ => {}
        }
    }
}

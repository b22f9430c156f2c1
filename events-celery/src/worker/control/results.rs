//! Task results as Celery's Redis result backend stores them, as an observer of the worker's
//! events: `SUCCESS` when every handler completed, `FAILURE` naming the handlers that failed
//! for good (a `RuntimeError` Python's `AsyncResult.get()` raises), `REVOKED` for revoked and
//! expired tasks, `STARTED` with track-started. Written by a background task through a bounded
//! queue: a slow result store never slows the worker (results that do not fit are dropped and
//! counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::plane::failure_text;
use crate::broker::BrokerUrl;
use crate::broker::control::ResultStore;
use crate::codec::{
    DEFAULT_RESULT_EXPIRES_SECS, ExceptionInfo, RedisResultWrite, ResultMeta, TaskMessage,
};
use crate::worker::events::{WorkerEvent, WorkerObserver};

enum Job {
    Write(RedisResultWrite),
    /// Everything queued before it has been written (or given up).
    Flush(oneshot::Sender<()>),
}

/// The results observer.
pub(crate) struct Results {
    queue: mpsc::Sender<Job>,
    track_started: bool,
    hostname: String,
    /// Results dropped (queue full, or the store refused them).
    dropped: Arc<AtomicU64>,
}

impl Results {
    /// Starts the writer for the store at `url`.
    pub(crate) fn start(
        url: BrokerUrl,
        track_started: bool,
        hostname: String,
        capacity: usize,
    ) -> (Self, JoinHandle<()>) {
        let (queue, mut receiver) = mpsc::channel::<Job>(capacity.max(16));
        let dropped = Arc::new(AtomicU64::new(0));
        let store = ResultStore::new(url);
        let lost = Arc::clone(&dropped);
        let writer = tokio::spawn(async move {
            let mut failing = false;
            while let Some(job) = receiver.recv().await {
                let write = match job {
                    Job::Write(write) => write,
                    Job::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                match store.write(&write).await {
                    Ok(()) => failing = false,
                    Err(error) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                        if !failing {
                            tracing::warn!(%error, "cannot store task results; dropping them until the result backend takes them again");
                        }
                        failing = true;
                    }
                }
            }
        });
        (
            Self {
                queue,
                track_started,
                hostname,
                dropped,
            },
            writer,
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
            return;
        };
        if self.queue.try_send(Job::Write(write)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Results {
    /// Waits (a few seconds at most) for the results queued so far to be written, then stops
    /// the writer.
    pub(crate) async fn finish(&self, writer: JoinHandle<()>) {
        let limit = std::time::Duration::from_secs(3);
        let (done, flushed) = oneshot::channel();
        if let Ok(Ok(())) = tokio::time::timeout(limit, self.queue.send(Job::Flush(done))).await {
            let _ = tokio::time::timeout(limit, flushed).await;
        }
        writer.abort();
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "task results not stored (the result backend could not take them)"
            );
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

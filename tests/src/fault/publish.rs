//! Publishing `fault.tick` messages: one tick as the backend would publish it, and publishing many in
//! the background while a fault is injected, recording what was confirmed and what failed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events_celery::{CeleryBackend, TaskMessage};

use super::TICK_EVENT;

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

//! The worker's side of the task context and the inbox: the [`TaskContext`] of each message
//! (set around each handler run), asking the configured [`Inbox`] which handlers already
//! completed a task, skipping them, and recording the ones that succeed.

use std::sync::Arc;
use std::time::SystemTime;

use events_core::Handler;
use events_core::inbox::Inbox;
use events_core::task::TaskContext;
use events_core::text::OneLine;

use super::WorkerConfig;
use super::core::Core;
use super::events::WorkerEvent;
use crate::codec::TaskMessage;

/// The inbox a worker uses (a shared [`Inbox`]).
#[derive(Clone)]
pub(crate) struct InboxHandle(pub(crate) Arc<dyn Inbox>);

impl std::fmt::Debug for InboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl WorkerConfig {
    /// Records each (task id, handler) that completed in `inbox`, and skips a handler that
    /// already completed when its message comes again: a broker redelivery (RabbitMQ after a
    /// lost connection, Redis after the visibility timeout), a Python worker's restore, or a
    /// duplicate published with the same task id. Skipped handlers count as succeeded; each is
    /// logged at `DEBUG` and counted in [`WorkerStats::inbox_skipped`](super::WorkerStats).
    ///
    /// Default: none (every delivery runs every handler, at least once). Stores:
    /// [`RedisInbox`](crate::RedisInbox) here, `PgInbox` in `events-outbox` (whose handlers
    /// can record completion in their own transaction, effectively once). See
    /// [`events_core::inbox`] for the flow and what happens when the store fails.
    ///
    /// Two deliveries of one task running at the same moment (a duplicate taken by another
    /// worker while the first still runs) both find the handler not done and both run it; a
    /// handler that records in its own PostgreSQL transaction still commits once.
    pub fn inbox(mut self, inbox: impl Inbox) -> Self {
        self.inbox = Some(InboxHandle(Arc::new(inbox)));
        self
    }

    /// [`inbox`](Self::inbox) with a store shared with other code.
    pub fn inbox_shared(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = Some(InboxHandle(inbox));
        self
    }
}

/// The context of `message`, taken from `queue`; `redelivered` when the broker says it
/// delivered it before.
pub(crate) fn task_context(message: &TaskMessage, queue: &str, redelivered: bool) -> TaskContext {
    let time = |t: Option<chrono::DateTime<chrono::FixedOffset>>| t.map(SystemTime::from);
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers
        .custom
        .iter()
        .map(|(name, value)| {
            let value = serde_json::to_value(value)
                .unwrap_or_else(|_| serde_json::Value::String(format!("{value:?}")));
            (name.clone(), value)
        })
        .collect();
    let redelivered = redelivered
        || matches!(
            headers.get("redelivered"),
            Some(serde_json::Value::Bool(true))
        );
    TaskContext::new(message.id.clone(), message.task.clone())
        .with_retries(message.headers.retries)
        .with_eta(time(message.headers.eta))
        .with_expires(time(message.headers.expires))
        .with_root_id(message.headers.root_id.clone())
        .with_parent_id(message.headers.parent_id.clone())
        .with_headers(headers)
        .with_redelivered(redelivered)
        .with_queue(Some(queue.to_owned()))
}

impl Core {
    /// Which of `handlers` already completed `task`, as the inbox says; none without an inbox
    /// or when it cannot be asked (then they all run: at least once, as without one).
    pub(crate) async fn already_completed(
        &self,
        task: &TaskContext,
        handlers: &[Handler],
    ) -> Vec<bool> {
        let not_done = || vec![false; handlers.len()];
        let Some(InboxHandle(inbox)) = &self.config.inbox else {
            return not_done();
        };
        if handlers.is_empty() {
            return Vec::new();
        }
        let names: Vec<&str> = handlers.iter().map(Handler::name).collect();
        match inbox.completed(task, &names).await {
            Ok(done) if done.len() == handlers.len() => done,
            Ok(done) => {
                self.inbox_failed(&format!(
                    "the inbox answered {} flags for {} handlers",
                    done.len(),
                    handlers.len()
                ));
                not_done()
            }
            Err(error) => {
                self.inbox_failed(&format!(
                    "could not ask the inbox which handlers completed: {}",
                    OneLine(&*error)
                ));
                not_done()
            }
        }
    }

    /// After `handler` succeeded with `context` current: records its completion in the inbox,
    /// unless it recorded it itself (in its own transaction).
    pub(crate) async fn record_completion(&self, handler: &Handler, context: &TaskContext) {
        if let Some(InboxHandle(inbox)) = &self.config.inbox
            && !context.completion_recorded()
            && let Err(error) = inbox.record(context, handler.name()).await
        {
            self.inbox_failed(&format!(
                "could not record in the inbox that handler `{}` completed: {}; a redelivery \
                 would run it again",
                handler.name(),
                OneLine(&*error)
            ));
        }
    }

    fn inbox_failed(&self, what: &str) {
        self.emit(WorkerEvent::InboxFailed { error: what });
    }
}

//! Task results as Celery's Redis result backend stores them, for Python's
//! `AsyncResult(id).get()`: the key `celery-task-meta-<id>` ([`result_key`]) is written with
//! `SETEX key <expires seconds> <json>` and the same JSON is `PUBLISH`ed on a channel of the
//! same name (what `get()` waits on); the expiry is `result_expires`, 1 day by default
//! ([`DEFAULT_RESULT_EXPIRES_SECS`]).
//!
//! The JSON (`celery.backends.base.Backend._get_result_meta`, JSON serializer):
//!
//! ```text
//! {"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
//!  "date_done": "2026-12-01T17:19:53.210024+00:00"[, "parent_id": …], "task_id": "…"}
//! ```
//!
//! A failure's `result` is the exception as Celery's JSON serializer writes it:
//! `{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}`
//! ([`ExceptionInfo`]); `STARTED` carries `{"pid": …, "hostname": …}` and no `date_done`.

use chrono::{DateTime, FixedOffset};

use super::error::EncodeError;
use super::json::{Json, JsonMap};
use super::python_json::push_json_value;
use super::timestamp::isoformat;

/// Celery's default `result_expires`: one day.
pub const DEFAULT_RESULT_EXPIRES_SECS: u64 = 86_400;

/// The Redis key (and pub/sub channel) of a task's result: `celery-task-meta-<id>`.
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// A task state (`celery.states`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// `PENDING` (never stored: what an unknown id reads as).
    Pending,
    /// `STARTED` (stored when `task_track_started` is on).
    Started,
    /// `RETRY`.
    Retry,
    /// `SUCCESS`.
    Success,
    /// `FAILURE`.
    Failure,
    /// `REVOKED`.
    Revoked,
}

impl TaskState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Started => "STARTED",
            Self::Retry => "RETRY",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Revoked => "REVOKED",
        }
    }

    /// Whether it is final (`READY_STATES`: success, failure, revoked): only those get a
    /// `date_done`.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }
}

/// An exception as Celery's JSON result serializer writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    /// The class name (`ValueError`); Python raises this class when it is importable from
    /// `exc_module`, and a generated one of that name otherwise.
    pub exc_type: String,
    /// The exception's `args` (`["boom"]`).
    pub exc_message: Vec<Json>,
    /// The module (`builtins`, `celery.exceptions`).
    pub exc_module: String,
}

impl ExceptionInfo {
    /// A `builtins` exception with one message (`ExceptionInfo::builtin("RuntimeError", …)`).
    pub fn builtin(exc_type: &str, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.to_owned(),
            exc_message: vec![Json::String(message.into())],
            exc_module: "builtins".to_owned(),
        }
    }

    /// `celery.exceptions.TaskRevokedError(reason)` (`revoked`, `expired`), what a revoked
    /// task's result holds.
    pub fn revoked(reason: &str) -> Self {
        Self {
            exc_type: "TaskRevokedError".to_owned(),
            exc_message: vec![Json::String(reason.to_owned())],
            exc_module: "celery.exceptions".to_owned(),
        }
    }

    /// The JSON object: `exc_type`, `exc_message`, `exc_module`.
    pub fn to_json(&self) -> Json {
        let mut map = JsonMap::with_capacity(3);
        map.insert("exc_type".into(), self.exc_type.clone().into());
        map.insert("exc_message".into(), Json::Array(self.exc_message.clone()));
        map.insert("exc_module".into(), self.exc_module.clone().into());
        Json::Object(map)
    }
}

/// One stored result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    /// The task id.
    pub task_id: String,
    /// The state.
    pub status: TaskState,
    /// The return value, the exception ([`ExceptionInfo::to_json`]) or `{"pid", "hostname"}`.
    pub result: Json,
    /// The traceback text (failures and retries), else `None`.
    pub traceback: Option<String>,
    /// Child task results (`[]` for a task that started none).
    pub children: Json,
    /// When it became ready (ready states only).
    pub date_done: Option<DateTime<FixedOffset>>,
    /// The `parent_id` of the task's message, written (before `task_id`) when it has one.
    pub parent_id: Option<String>,
    /// The `group` of the task's message, written as `group_id` when it has one.
    pub group_id: Option<String>,
}

impl ResultMeta {
    fn new(task_id: &str, status: TaskState, result: Json) -> Self {
        Self {
            task_id: task_id.to_owned(),
            status,
            result,
            traceback: None,
            children: Json::Array(Vec::new()),
            date_done: None,
            parent_id: None,
            group_id: None,
        }
    }

    /// `SUCCESS` with the return value.
    pub fn success(task_id: &str, result: Json, date_done: DateTime<FixedOffset>) -> Self {
        Self {
            date_done: Some(date_done),
            ..Self::new(task_id, TaskState::Success, result)
        }
    }

    /// `FAILURE` with the exception and its traceback.
    pub fn failure(
        task_id: &str,
        exception: &ExceptionInfo,
        traceback: Option<String>,
        date_done: DateTime<FixedOffset>,
    ) -> Self {
        Self {
            traceback,
            date_done: Some(date_done),
            ..Self::new(task_id, TaskState::Failure, exception.to_json())
        }
    }

    /// `STARTED`: `{"pid": pid, "hostname": hostname}`, no `date_done`.
    pub fn started(task_id: &str, pid: u32, hostname: &str) -> Self {
        let mut result = JsonMap::with_capacity(2);
        result.insert("pid".into(), pid.into());
        result.insert("hostname".into(), hostname.into());
        Self::new(task_id, TaskState::Started, Json::Object(result))
    }

    /// `REVOKED` with `TaskRevokedError(reason)` (`revoked`, `expired`).
    pub fn revoked(task_id: &str, reason: &str, date_done: DateTime<FixedOffset>) -> Self {
        Self {
            date_done: Some(date_done),
            ..Self::new(
                task_id,
                TaskState::Revoked,
                ExceptionInfo::revoked(reason).to_json(),
            )
        }
    }

    /// The stored JSON, keys in Celery's order: `status, result, traceback, children,
    /// date_done[, group_id][, parent_id], task_id`.
    pub fn to_json(&self) -> Json {
        let mut map = JsonMap::with_capacity(8);
        map.insert("status".into(), self.status.as_str().into());
        map.insert("result".into(), self.result.clone());
        map.insert(
            "traceback".into(),
            self.traceback.clone().map_or(Json::Null, Json::from),
        );
        map.insert("children".into(), self.children.clone());
        map.insert(
            "date_done".into(),
            self.date_done
                .as_ref()
                .map_or(Json::Null, |at| Json::from(isoformat(at))),
        );
        if let Some(group) = &self.group_id {
            map.insert("group_id".into(), group.clone().into());
        }
        if let Some(parent) = &self.parent_id {
            map.insert("parent_id".into(), parent.clone().into());
        }
        map.insert("task_id".into(), self.task_id.clone().into());
        Json::Object(map)
    }

    /// The JSON text, as Python's `json.dumps` writes it.
    pub fn to_json_string(&self) -> Result<String, EncodeError> {
        let mut out = String::with_capacity(256);
        push_json_value(&mut out, &self.to_json()).map_err(EncodeError::Body)?;
        Ok(out)
    }

    /// What the Redis backend does with it: `SETEX key expires value` then `PUBLISH key value`.
    pub fn redis_write(&self, expires_secs: u64) -> Result<RedisResultWrite, EncodeError> {
        Ok(RedisResultWrite {
            key: result_key(&self.task_id),
            value: self.to_json_string()?,
            expires_secs,
        })
    }
}

/// The two Redis commands that store one result: `SETEX key expires_secs value`, then
/// `PUBLISH key value` (the channel is the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisResultWrite {
    /// `celery-task-meta-<id>`: the key and the channel.
    pub key: String,
    /// The JSON.
    pub value: String,
    /// The `SETEX` expiry in seconds ([`DEFAULT_RESULT_EXPIRES_SECS`]).
    pub expires_secs: u64,
}

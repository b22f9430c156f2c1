//! Celery's control plane for the worker, without I/O: the Lamport clock, the heartbeat
//! schedule, the revoked set, the remote-control dispatcher (`celery inspect` / `celery
//! control` / Flower) and the event builder. The worker's loop feeds it parsed messages and
//! publishes what it returns (see `crate::codec` for the wire forms).

mod clock;
mod dispatcher;
mod events;
mod heartbeat;
mod revoked;
#[cfg(test)]
mod tests;

pub(crate) use clock::LamportClock;
pub(crate) use dispatcher::{
    Action, BrokerInfo, ControlConfig, ControlState, EventGroups, Outcome, QueueInfo,
    STATE_CHANGING_COMMANDS, ScheduledTask, TaskInfo, WorkerSnapshot, mask_url_password, py_repr,
};
pub(crate) use events::{EventBuilder, WorkerCounters};
pub(crate) use heartbeat::HeartbeatSchedule;
pub(crate) use revoked::{REVOKE_EXPIRES_SECS, REVOKES_MAX, RevokedSet};

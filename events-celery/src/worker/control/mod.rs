//! Celery's control plane for the worker, without I/O: the Lamport clock, the heartbeat
//! schedule, the revoked set, the remote-control dispatcher (`celery inspect` / `celery
//! control` / Flower) and the event builder. The worker's loop feeds it parsed messages and
//! publishes what it returns (see `crate::codec` for the wire forms).

mod clock;
mod dispatcher;
mod events;
// The worker beats on its own timer (`HEARTBEAT`); the schedule documents Celery's `Heart`
// and is checked by the tests.
#[cfg_attr(not(test), allow(dead_code))]
mod heartbeat;
pub(crate) mod plane;
pub(crate) mod results;
mod revoked;
#[cfg(test)]
mod tests;

pub(crate) use clock::LamportClock;
pub(crate) use dispatcher::{
    Action, BrokerInfo, ControlConfig, ControlState, QueueInfo, ScheduledTask, TaskInfo,
    WorkerSnapshot, py_repr,
};
pub(crate) use events::{EventBuilder, WorkerCounters};
// What only the tests of the dispatcher, schedule and revoked set use by name.
#[cfg(test)]
pub(crate) use dispatcher::mask_url_password;
#[cfg(test)]
pub(crate) use revoked::REVOKES_MAX;

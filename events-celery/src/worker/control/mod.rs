//! Celery's control plane for the worker: without I/O, the Lamport clock, the revoked set, the
//! remote-control dispatcher (`celery inspect` / `celery control` / Flower) and the event
//! builder; at work, the plane (events published, the mailbox answered) and the results
//! writer, both through `crate::broker::control`. Heartbeats come from the worker's own timer
//! ([`HEARTBEAT`](crate::worker::HEARTBEAT), Celery's 2 s), as `WorkerEvent::Heartbeat`s the
//! plane turns into `worker-heartbeat` events (see `crate::codec` for the wire forms).

mod clock;
mod dispatcher;
mod events;
#[cfg(test)]
mod observer_tests;
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

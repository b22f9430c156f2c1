//! Turns worker-level facts (online, heartbeat, a task received, started, succeeded…) into
//! Celery event messages, as Celery's `EventDispatcher` does: the clock forwarded once per
//! event, events of a disabled group dropped. Pure: the caller gives the time and publishes.

use crate::codec::{
    EncodeError, EventSource, EventStamp, KombuMessage, SoftwareInfo, TaskEvent, TaskEventBatch,
    WorkerEventKind, WorkerStatus, event_group, worker_event_message,
};

use super::clock::LamportClock;
use super::dispatcher::EventGroups;

/// The worker's counters for a worker event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WorkerCounters {
    /// Tasks running now.
    pub(crate) active: u64,
    /// Tasks processed since start.
    pub(crate) processed: u64,
    /// Load averages, rounded up to 2 decimals.
    pub(crate) loadavg: [f64; 3],
}

/// Builds the worker's event messages.
#[derive(Debug, Clone)]
pub(crate) struct EventBuilder {
    source: EventSource,
    software: SoftwareInfo,
    freq: f64,
    /// Which groups are sent (`enable_events` / `disable_events` change it through
    /// [`Action::SetTaskEvents`](super::Action::SetTaskEvents)).
    pub(crate) groups: EventGroups,
}

impl EventBuilder {
    /// Events from `source`, heartbeats every `freq` seconds, task events on or off.
    pub(crate) fn new(source: EventSource, freq: f64, task_events: bool) -> Self {
        Self {
            source,
            software: SoftwareInfo::rust(),
            freq,
            groups: EventGroups::new(task_events),
        }
    }

    /// Turns task events on or off (after [`Action::SetTaskEvents`](super::Action::SetTaskEvents)).
    pub(crate) fn set_task_events(&mut self, on: bool) {
        if on {
            self.groups.enable_task();
        } else {
            self.groups.disable_task();
        }
    }

    /// A worker event, the clock forwarded for it.
    pub(crate) fn worker_event(
        &self,
        kind: WorkerEventKind,
        counters: WorkerCounters,
        clock: &mut LamportClock,
        timestamp: f64,
    ) -> Option<KombuMessage> {
        if !self.groups.sends("worker") {
            return None;
        }
        let status = WorkerStatus {
            freq: self.freq,
            active: counters.active,
            processed: counters.processed,
            loadavg: counters.loadavg,
            software: self.software.clone(),
        };
        let stamp = EventStamp {
            clock: clock.forward(),
            timestamp,
        };
        Some(worker_event_message(&self.source, kind, &status, stamp))
    }

    /// Writes a task event into `batch` if task events are on (`Ok(false)` when they are off:
    /// the clock is forwarded only when it is written, as Celery's `send` returns before
    /// stamping an event of a disabled group).
    pub(crate) fn push_task_event(
        &self,
        batch: &mut TaskEventBatch,
        event: &TaskEvent,
        clock: &mut LamportClock,
        timestamp: f64,
    ) -> Result<bool, EncodeError> {
        if !self.groups.sends(event_group(event.event_type())) {
            return Ok(false);
        }
        let stamp = EventStamp {
            clock: clock.forward(),
            timestamp,
        };
        batch.push(event, stamp)?;
        Ok(true)
    }

    /// Who sends the events.
    pub(crate) fn source(&self) -> &EventSource {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(task_events: bool) -> EventBuilder {
        let source = EventSource {
            hostname: "w@h".into(),
            pid: 7,
            utcoffset: 0.0,
        };
        EventBuilder::new(source, 2.0, task_events)
    }

    #[test]
    fn task_events_follow_the_group_switch() {
        let started = TaskEvent::Started { uuid: "id".into() };
        let mut clock = LamportClock::new();
        let mut events = builder(false);
        let mut batch = TaskEventBatch::new(events.source()).unwrap();
        let mut push = |events: &EventBuilder, clock: &mut LamportClock, at: f64| {
            events
                .push_task_event(&mut batch, &started, clock, at)
                .unwrap()
                .then(|| batch.take_message().unwrap())
        };
        assert!(push(&events, &mut clock, 1.0).is_none());
        assert_eq!(clock.value(), 0, "a dropped event does not tick the clock");
        let counters = WorkerCounters {
            active: 0,
            processed: 0,
            loadavg: [0.0; 3],
        };
        let online = events
            .worker_event(WorkerEventKind::Online, counters, &mut clock, 1.0)
            .unwrap();
        assert_eq!(online.routing_key, "worker.online");
        assert_eq!(online.body["clock"].as_u64(), Some(1));
        events.set_task_events(true);
        let message = push(&events, &mut clock, 2.0).unwrap();
        assert_eq!(message.routing_key, "task.started");
        let body = crate::codec::Json::parse(&message.body_json).unwrap();
        assert_eq!(body["clock"].as_u64(), Some(2));
        events.set_task_events(false);
        assert!(push(&events, &mut clock, 3.0).is_none());
        assert!(push(&builder(true), &mut clock, 3.0).is_some());
    }
}

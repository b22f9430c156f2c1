//! When to send worker events: `worker-online` on start, `worker-heartbeat` every `freq`
//! seconds (Celery's `Heart`, 2 s by default), `worker-offline` on stop. A value the worker's
//! loop polls; it does no I/O and reads no clock itself.

use std::time::{Duration, Instant};

use crate::codec::{DEFAULT_HEARTBEAT_FREQ, WorkerEventKind};

/// The heartbeat schedule.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatSchedule {
    freq: f64,
    interval: Duration,
    next: Option<Instant>,
}

impl Default for HeartbeatSchedule {
    fn default() -> Self {
        Self::new(DEFAULT_HEARTBEAT_FREQ)
    }
}

impl HeartbeatSchedule {
    /// Every `freq` seconds (a non-finite or non-positive `freq` is Celery's 2.0).
    pub(crate) fn new(freq: f64) -> Self {
        let freq = if freq.is_finite() && freq > 0.0 && freq < 1e9 {
            freq
        } else {
            DEFAULT_HEARTBEAT_FREQ
        };
        Self {
            freq,
            interval: Duration::from_secs_f64(freq),
            next: None,
        }
    }

    /// The interval in seconds: the `freq` field of worker events.
    pub(crate) fn freq(&self) -> f64 {
        self.freq
    }

    /// Starts the schedule at `now`: send `worker-online` now, the first heartbeat one
    /// interval later.
    pub(crate) fn start(&mut self, now: Instant) -> WorkerEventKind {
        self.next = Some(now + self.interval);
        WorkerEventKind::Online
    }

    /// `Some(Heartbeat)` when one is due at `now` (then the next is one interval later; missed
    /// beats are not sent in a burst), `None` otherwise or when stopped.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<WorkerEventKind> {
        let next = self.next?;
        if now < next {
            return None;
        }
        let mut following = next + self.interval;
        if following <= now {
            following = now + self.interval;
        }
        self.next = Some(following);
        Some(WorkerEventKind::Heartbeat)
    }

    /// When the next heartbeat is due (for the loop to sleep until), if started.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// Stops the schedule: send `worker-offline` if it was running.
    pub(crate) fn stop(&mut self) -> Option<WorkerEventKind> {
        self.next.take().map(|_| WorkerEventKind::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_heartbeats_offline() {
        let t0 = Instant::now();
        let mut beat = HeartbeatSchedule::default();
        assert_eq!(beat.freq(), 2.0);
        assert_eq!(beat.poll(t0), None, "not started");
        assert_eq!(beat.start(t0), WorkerEventKind::Online);
        assert_eq!(beat.poll(t0 + Duration::from_millis(1999)), None);
        assert_eq!(
            beat.poll(t0 + Duration::from_secs(2)),
            Some(WorkerEventKind::Heartbeat)
        );
        assert_eq!(beat.next_due(), Some(t0 + Duration::from_secs(4)));
        // Ten intervals late: one heartbeat, then one interval from now.
        let late = t0 + Duration::from_secs(24);
        assert_eq!(beat.poll(late), Some(WorkerEventKind::Heartbeat));
        assert_eq!(beat.poll(late), None);
        assert_eq!(beat.stop(), Some(WorkerEventKind::Offline));
        assert_eq!(beat.stop(), None);
        assert_eq!(HeartbeatSchedule::new(f64::NAN).freq(), 2.0);
        assert_eq!(HeartbeatSchedule::new(5.0).freq(), 5.0);
    }
}

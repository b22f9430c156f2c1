//! The worker's Lamport clock, as Celery's `kombu.clocks.LamportClock`: forwarded for every
//! event and reply the worker sends, adjusted to the clock of every control request it reads.

/// A Lamport clock (`LamportClock`): starts at 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LamportClock {
    value: u64,
}

impl LamportClock {
    /// A clock at 0.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The current value (`clock.value`, what `inspect clock` and `stats` report).
    pub(crate) fn value(&self) -> u64 {
        self.value
    }

    /// `forward()`: one tick, before sending something; returns the new value.
    pub(crate) fn forward(&mut self) -> u64 {
        self.value = self.value.saturating_add(1);
        self.value
    }

    /// `adjust(other)`: on receiving a message stamped `other`, `max(value, other) + 1`.
    pub(crate) fn adjust(&mut self, other: u64) -> u64 {
        self.value = self.value.max(other).saturating_add(1);
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_adjust_as_kombu() {
        let mut clock = LamportClock::new();
        assert_eq!(clock.forward(), 1);
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12);
        assert_eq!(clock.value(), 12);
        let mut top = LamportClock { value: u64::MAX };
        assert_eq!(top.forward(), u64::MAX);
        assert_eq!(top.adjust(u64::MAX), u64::MAX);
    }
}

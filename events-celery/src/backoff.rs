//! [`Backoff`]: delays that double from a first one to a maximum, with jitter — the one
//! place reconnections, failed periodic commands, idle polls and handler retries get their
//! delays from.

use std::time::Duration;

/// How much randomness a delay gets, so that workers that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// ±25 % (reconnections, failed periodic commands).
    Around,
    /// Up to 25 % more (idle polls: never sooner than the base delay).
    Above,
    /// Between half of the delay and all of it (handler retries, as Celery's
    /// `retry_jitter`).
    Below,
}

impl Jitter {
    fn apply(self, base: Duration) -> Duration {
        match self {
            Jitter::Around => base.mul_f64(0.75 + fastrand::f64() * 0.5),
            Jitter::Above => base + base.mul_f64(fastrand::f64() * 0.25),
            Jitter::Below => {
                let half = base / 2;
                half + half.mul_f64(fastrand::f64())
            }
        }
    }
}

/// Delays between attempts: `first`, doubling up to `max`, each with [`Jitter`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// The first delay between reconnection attempts.
    pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(200);

    /// Delays from `first` to `max` (`max` wins when it is shorter).
    pub(crate) fn new(first: Duration, max: Duration, jitter: Jitter) -> Self {
        let first = first.min(max);
        Self {
            first,
            next: first,
            max,
            jitter,
        }
    }

    /// Between reconnection attempts (or attempts at a periodic command that failed):
    /// [`RECONNECT_MIN`](Self::RECONNECT_MIN) doubling to `max`, ±25 %.
    pub(crate) fn reconnect(max: Duration) -> Self {
        Self::new(Self::RECONNECT_MIN, max, Jitter::Around)
    }

    /// The delay before the next attempt (the following one will be twice as long).
    pub(crate) fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        self.jitter.apply(base)
    }

    /// After a success: start again from the first delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay before attempt `n + 1` (`n` earlier attempts), without keeping state:
    /// `first × 2ⁿ`, capped at `max`, with `jitter`.
    pub(crate) fn nth(first: Duration, max: Duration, n: u32, jitter: Jitter) -> Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        jitter.apply(first.saturating_mul(factor).min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_double_with_jitter_up_to_the_maximum_and_reset() {
        let max = Duration::from_secs(1);
        let mut backoff = Backoff::reconnect(max);
        let mut base = Backoff::RECONNECT_MIN;
        for _ in 0..8 {
            let delay = backoff.step();
            assert!(
                delay >= base.mul_f64(0.75) && delay <= base.mul_f64(1.25),
                "{delay:?}"
            );
            base = (base * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.step() <= Backoff::RECONNECT_MIN.mul_f64(1.25));
    }

    #[test]
    fn a_maximum_below_the_first_delay_wins() {
        let mut backoff = Backoff::new(
            Duration::from_secs(5),
            Duration::from_secs(1),
            Jitter::Above,
        );
        for _ in 0..3 {
            let delay = backoff.step();
            assert!(
                delay >= Duration::from_secs(1) && delay <= Duration::from_millis(1250),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn jitter_above_never_shortens_and_below_never_lengthens() {
        let first = Duration::from_millis(1);
        let max = Duration::from_millis(50);
        let mut polls = Backoff::new(first, max, Jitter::Above);
        let mut base = first;
        for _ in 0..10 {
            let delay = polls.step();
            assert!(delay >= base && delay <= base.mul_f64(1.25), "{delay:?}");
            base = (base * 2).min(max);
        }
        for n in 0..40 {
            let full = Duration::from_secs(1)
                .saturating_mul(2u32.saturating_pow(n.min(31)))
                .min(Duration::from_secs(300));
            let delay = Backoff::nth(
                Duration::from_secs(1),
                Duration::from_secs(300),
                n,
                Jitter::Below,
            );
            assert!(delay >= full / 2 && delay <= full, "{n}: {delay:?}");
        }
    }

    #[test]
    fn huge_attempt_counts_saturate_at_the_maximum() {
        let delay = Backoff::nth(
            Duration::from_secs(u64::MAX / 4),
            Duration::from_secs(60),
            u32::MAX,
            Jitter::Around,
        );
        assert!(delay <= Duration::from_secs(75), "{delay:?}");
    }
}

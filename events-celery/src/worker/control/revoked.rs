//! The revoked task ids, kept as Celery 5.7's worker keeps them (`celery.worker.state.revoked`,
//! a `LimitedSet(maxlen=REVOKES_MAX, expires=REVOKE_EXPIRES)`): an id stays revoked until the
//! set fills up; when an insertion brings it to [`REVOKES_MAX`] entries, the oldest ones over
//! the limit go, and so do all that are older than [`REVOKE_EXPIRES_SECS`].

use std::collections::{HashMap, VecDeque};

/// `REVOKES_MAX`: at most this many revoked ids are kept.
pub(crate) const REVOKES_MAX: usize = 50_000;

/// `REVOKE_EXPIRES`: once the set is full, revokes older than this (seconds) are dropped.
pub(crate) const REVOKE_EXPIRES_SECS: f64 = 10_800.0;

/// The revoked ids. Times are seconds on a monotonic clock the caller reads.
#[derive(Debug, Clone)]
pub(crate) struct RevokedSet {
    max_len: usize,
    expires: f64,
    /// id → (inserted at, sequence number of its live queue entry).
    entries: HashMap<String, (f64, u64)>,
    /// Insertion order; entries whose sequence number is stale were re-added or popped.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

impl Default for RevokedSet {
    fn default() -> Self {
        Self::new(REVOKES_MAX, REVOKE_EXPIRES_SECS)
    }
}

impl RevokedSet {
    /// A set of at most `max_len` ids whose entries expire `expires` seconds after insertion
    /// (checked when the set fills up, as Celery's).
    pub(crate) fn new(max_len: usize, expires: f64) -> Self {
        Self {
            max_len: max_len.max(1),
            expires,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Adds (or refreshes) `id` at time `now`.
    pub(crate) fn add(&mut self, id: &str, now: f64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(id.to_owned(), (now, seq));
        self.order.push_back((seq, id.to_owned()));
        if self.entries.len() >= self.max_len {
            self.purge(now);
        }
        // Stale queue entries never outnumber live ones by much.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(seq, id)| entries.get(id).is_some_and(|&(_, s)| s == *seq));
        }
    }

    /// Whether `id` is revoked.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// How many ids are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// `purge(now)`: drops the oldest ids over the limit, then every expired one.
    pub(crate) fn purge(&mut self, now: f64) {
        while self.entries.len() > self.max_len {
            self.pop_oldest();
        }
        while let Some(&(seq, ref id)) = self.order.front() {
            match self.entries.get(id) {
                Some(&(at, live)) if live == seq => {
                    if at + self.expires > now {
                        break;
                    }
                    self.pop_oldest();
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    fn pop_oldest(&mut self) {
        while let Some((seq, id)) = self.order.pop_front() {
            if self.entries.get(&id).is_some_and(|&(_, live)| live == seq) {
                self.entries.remove(&id);
                return;
            }
        }
    }

    /// The ids, oldest first (`inspect revoked`).
    pub(crate) fn ids(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|(seq, id)| self.entries.get(id).is_some_and(|&(_, s)| s == *seq))
            .map(|(_, id)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_revokes_until_full_then_drops_oldest_and_expired() {
        let mut set = RevokedSet::new(4, 100.0);
        set.add("a", 0.0);
        set.add("b", 1.0);
        set.add("a", 2.0); // refreshed: now the newest
        assert_eq!(set.ids(), ["b", "a"]);
        // Expiry is only checked when the set fills: long-expired ids are still revoked.
        set.add("c", 500.0);
        assert!(set.contains("b"));
        // The fourth insertion fills it: everything older than 100 s goes.
        set.add("d", 501.0);
        assert_eq!(set.ids(), ["c", "d"]);
        for (i, id) in ["e", "f", "g"].iter().enumerate() {
            set.add(id, 502.0 + i as f64);
        }
        assert_eq!(set.len(), 4);
        assert_eq!(set.ids(), ["d", "e", "f", "g"]);
        assert!(!set.contains("c"));
    }

    #[test]
    fn celery_limits() {
        let mut set = RevokedSet::default();
        for i in 0..(REVOKES_MAX + 10) {
            set.add(&i.to_string(), 0.0);
        }
        assert_eq!(set.len(), REVOKES_MAX);
        assert!(!set.contains("0"));
        assert!(set.contains(&(REVOKES_MAX + 9).to_string()));
        set.purge(REVOKE_EXPIRES_SECS);
        assert_eq!(set.len(), 0);
    }
}

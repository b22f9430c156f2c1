//! Rate limits for the log lines a flood repeats (a dead letter per bad message, an error per
//! failed poll): the first few of each kind in a window are logged, the rest counted, and the
//! count logged once — "… and 9,999 more like it in the last 10 s".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a window lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// How many lines of one kind a window logs in full.
pub(crate) const BURST: u32 = 10;

/// How loud a kind of line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loudness {
    Warn,
    Error,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    loudness: Loudness,
}

/// Counts each kind of line (a `&'static str`, the line's message) per [`WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    kinds: Mutex<HashMap<&'static str, Window>>,
}

impl Quiet {
    /// Whether a line of `kind` may be logged now; when not, it is counted, and the count is
    /// logged when the window ends (by the next line of that kind or by [`flush`](Self::flush)).
    pub(crate) fn allow(&self, kind: &'static str, loudness: Loudness) -> bool {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().expect("not poisoned");
        let window = kinds.entry(kind).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
            loudness,
        });
        if now.duration_since(window.started) >= WINDOW {
            report(kind, window, now);
            *window = Window {
                started: now,
                logged: 0,
                suppressed: 0,
                loudness,
            };
        }
        if window.logged < BURST {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// Logs the counts of the windows that ended (all of them with `all`, at shutdown).
    pub(crate) fn flush(&self, all: bool) {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().expect("not poisoned");
        kinds.retain(|kind, window| {
            if all || now.duration_since(window.started) >= WINDOW {
                report(kind, window, now);
                false
            } else {
                true
            }
        });
    }
}

fn report(kind: &str, window: &Window, now: Instant) {
    if window.suppressed == 0 {
        return;
    }
    let more = thousands(window.suppressed);
    let seconds = now.duration_since(window.started).as_secs().max(1);
    match window.loudness {
        Loudness::Error => tracing::error!(
            suppressed = window.suppressed,
            "{kind}: … and {more} more like it in the last {seconds} s"
        ),
        Loudness::Warn => tracing::warn!(
            suppressed = window.suppressed,
            "{kind}: … and {more} more like it in the last {seconds} s"
        ),
    }
}

/// `n` with a comma every three digits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9_999), "9,999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_burst_is_logged_and_the_rest_counted() {
        let quiet = Quiet::default();
        let allowed = (0..1000)
            .filter(|_| quiet.allow("line", Loudness::Error))
            .count();
        assert_eq!(allowed, BURST as usize);
        let kinds = quiet.kinds.lock().unwrap();
        assert_eq!(kinds["line"].suppressed, 1000 - u64::from(BURST));
    }
}

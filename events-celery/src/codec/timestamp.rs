//! The `eta` / `expires` headers: ISO-8601 as Python's `datetime.isoformat()` writes it.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Timelike};

/// Python's `isoformat()` of an aware datetime: `2026-11-26T09:08:59.059617+00:00`, without
/// the fraction when the microseconds are 0, and with microsecond precision.
pub(crate) fn isoformat(at: &DateTime<FixedOffset>) -> String {
    let mut text = String::with_capacity(32);
    // Formatting into a String cannot fail.
    let _ = write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S"));
    let micros = at.nanosecond() % 1_000_000_000 / 1_000;
    if micros != 0 {
        let _ = write!(text, ".{micros:06}");
    }
    let offset = at.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    let _ = write!(text, "{sign}{:02}:{:02}", offset / 3600, offset / 60 % 60);
    if !offset.is_multiple_of(60) {
        let _ = write!(text, ":{:02}", offset % 60);
    }
    text
}

/// Reads what Python's `isoformat()` (or any RFC 3339 writer) produced. A naive timestamp (no
/// offset, as Celery sends with `enable_utc=False`) is taken as UTC.
pub(crate) fn parse_iso8601(text: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at);
    }
    if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%::z") {
        return Some(at);
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc().fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_python_isoformat() {
        for text in [
            "2026-11-26T09:08:59.059617+00:00",
            "2026-11-26T09:08:59+00:00",
            "2024-05-17T14:30:45+02:00",
            "2024-05-17T14:30:45.000001-05:30",
            "0999-01-01T00:00:00+00:00",
        ] {
            let at = parse_iso8601(text).unwrap();
            assert_eq!(isoformat(&at), text);
        }
    }

    #[test]
    fn naive_is_utc_and_garbage_is_none() {
        let at = parse_iso8601("2024-05-17T12:30:45").unwrap();
        assert_eq!(isoformat(&at), "2024-05-17T12:30:45+00:00");
        assert_eq!(
            isoformat(&parse_iso8601("2024-05-17T12:30:45Z").unwrap()),
            "2024-05-17T12:30:45+00:00"
        );
        assert!(parse_iso8601("tomorrow").is_none());
        assert!(parse_iso8601("").is_none());
    }
}

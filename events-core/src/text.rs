//! Text from outside — broker messages, client errors, handler errors — made safe to log and
//! to keep in reasons: always one line.
//!
//! A message's content type, task name or payload can hold a newline followed by something
//! that looks like a log line ("… INFO admin logged in"). Everything such text reaches is
//! written through [`OneLine`]: control characters (newline, carriage return, escape
//! sequences, C1 controls) and Unicode line and paragraph separators become Rust escapes
//! (`\n`, `\u{1b}`), everything else stays as it is.

use std::fmt::{self, Display, Write};

/// `T` displayed on one line (see the module docs).
///
/// ```
/// use events_core::text::OneLine;
///
/// let task = "orders.place\n2026-01-01T00:00:00Z  INFO admin logged in";
/// assert_eq!(
///     OneLine(task).to_string(),
///     "orders.place\\n2026-01-01T00:00:00Z  INFO admin logged in"
/// );
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OneLine<T>(pub T);

impl<T: Display> Display for OneLine<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{}", self.0)
    }
}

/// Writes through to a formatter, escaping what would break a line.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if breaks_lines(c) {
                self.0.write_str(&s[plain..i])?;
                write!(self.0, "{}", c.escape_default())?;
                plain = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[plain..])
    }
}

/// Whether `c` could end a line or rewrite a terminal: every control character, and the
/// Unicode line and paragraph separators.
fn breaks_lines(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` on one line, as a new string only when something had to be escaped.
pub fn one_line(text: String) -> String {
    if text.chars().any(breaks_lines) {
        OneLine(&text).to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_breaks_a_line() {
        let forged = "application/json\n2026-12-01T00:00:00Z  INFO admin logged in\r\u{1b}[2K\
                      \u{85}next\u{2028}line\u{2029}para\ttab\u{7f}";
        let shown = OneLine(forged).to_string();
        assert!(!shown.chars().any(breaks_lines), "{shown}");
        assert_eq!(
            shown,
            "application/json\\n2026-12-01T00:00:00Z  INFO admin logged in\\r\\u{1b}[2K\
             \\u{85}next\\u{2028}line\\u{2029}para\\ttab\\u{7f}"
        );
        assert_eq!(one_line(forged.to_owned()), shown);
        let plain = "ünïcode stays, and so do \"quotes\" and \\backslashes";
        assert_eq!(OneLine(plain).to_string(), plain);
        assert_eq!(one_line(plain.to_owned()), plain);
    }
}

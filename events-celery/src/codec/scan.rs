//! A strict JSON scanner for the fast path of decoding: it reads only the plain forms (strings
//! without escapes, `null`, `true`, `false`, small non-negative integers, structural
//! characters) and answers `None` at anything else, and the caller then reads the input with
//! serde_json instead. Whatever it accepts, serde_json reads the same way; it never decides
//! that input is wrong.

/// A position in JSON text.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.as_bytes().get(self.at).copied()
    }

    /// Consumes `byte` (after whitespace).
    pub(crate) fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Consumes `byte` if it comes next (after whitespace).
    pub(crate) fn eat_if(&mut self, byte: u8) -> bool {
        self.eat(byte).is_some()
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// A string without escapes or control characters (after whitespace), borrowed.
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let len = special_byte(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are at ASCII bytes, so on character boundaries.
        self.text.get(start..start + len)
    }

    /// `null`, consumed if it comes next.
    pub(crate) fn null(&mut self) -> bool {
        self.literal("null")
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self) -> Option<bool> {
        if self.literal("true") {
            Some(true)
        } else if self.literal("false") {
            Some(false)
        } else {
            None
        }
    }

    fn literal(&mut self, word: &str) -> bool {
        self.skip_whitespace();
        let matched = self.text.as_bytes()[self.at..].starts_with(word.as_bytes())
            && !self.followed_by_word_byte(self.at + word.len());
        if matched {
            self.at += word.len();
        }
        matched
    }

    fn followed_by_word_byte(&self, at: usize) -> bool {
        self.text
            .as_bytes()
            .get(at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    }

    /// A non-negative integer of at most 19 digits, in JSON's form (no leading zeros, no
    /// fraction or exponent).
    pub(crate) fn integer(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let bytes = &self.text.as_bytes()[self.at..];
        let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 19 || (len > 1 && bytes[0] == b'0') {
            return None;
        }
        if self.followed_by_word_byte(self.at + len) {
            return None;
        }
        let value = bytes[..len]
            .iter()
            .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
        self.at += len;
        Some(value)
    }

    /// A string or `null`.
    pub(crate) fn optional_string(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            Some(None)
        } else {
            self.string().map(Some)
        }
    }

    /// Reads the entries of an object (the `{` already consumed), calling `entry` with each
    /// key, positioned at its value; `entry` answers `None` to give up.
    pub(crate) fn entries(
        &mut self,
        mut entry: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        if self.eat_if(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            entry(self, key)?;
            if self.eat_if(b'}') {
                return Some(());
            }
            self.eat(b',')?;
        }
    }
}

const ONES: u64 = u64::MAX / 255;
const HIGH: u64 = ONES << 7;

/// The high bit of each zero byte of `v`. The lowest flagged byte is exact (a borrow only
/// flags bytes above it), so "any flag" and "the first flag" are both exact.
#[inline]
fn zero_bytes(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGH
}

/// Eight bytes as one little-endian word.
#[inline]
pub(crate) fn word(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

/// Flags the bytes of `x` that a JSON string cannot hold as they are: `"`, the backslash and
/// control characters (below 0x20).
#[inline]
pub(crate) fn json_special(x: u64) -> u64 {
    (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
        | zero_bytes(x ^ (ONES * u64::from(b'"')))
        | zero_bytes(x ^ (ONES * u64::from(b'\\')))
}

/// Flags the bytes of `x` that are not printable ASCII (0x80 and above, and DEL) besides
/// those [`json_special`] flags.
#[inline]
pub(crate) fn non_ascii_or_del(x: u64) -> u64 {
    (x & HIGH) | zero_bytes(x ^ (ONES * 0x7f))
}

/// The index of the first `"`, backslash or control character, eight bytes at a time.
fn special_byte(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let flags = json_special(word(chunk));
        if flags != 0 {
            // At most 7: a byte index within the word.
            return Some(offset + (flags.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|at| offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_bytes_are_found_at_every_position() {
        for byte in 0..=255u8 {
            for len in 1..20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = byte;
                    let special = byte == b'"' || byte == b'\\' || byte < 0x20;
                    assert_eq!(
                        special_byte(&bytes),
                        special.then_some(at),
                        "{byte} {at} {len}"
                    );
                    bytes.push(b'"');
                    let first = if special { at } else { len };
                    assert_eq!(special_byte(&bytes), Some(first), "{byte} {at} {len}");
                }
            }
        }
    }

    #[test]
    fn reads_plain_forms_and_gives_up_on_the_rest() {
        let mut s = Scanner::new(r#" {"a": "x y", "b": null, "c": 12, "d": true} "#);
        let mut seen = Vec::new();
        s.eat(b'{').unwrap();
        s.entries(|s, key| {
            let value = match key {
                "a" => s.string()?.to_owned(),
                "b" => s.null().then(|| "null".to_owned())?,
                "c" => s.integer()?.to_string(),
                _ => s.boolean()?.to_string(),
            };
            seen.push(format!("{key}={value}"));
            Some(())
        })
        .unwrap();
        assert!(s.at_end());
        assert_eq!(seen, ["a=x y", "b=null", "c=12", "d=true"]);

        for refused in [
            r#""a\"b""#,
            "\"tab\there\"",
            "\"open",
            "01",
            "1.5",
            "1e3",
            "-1",
            "12345678901234567890",
            "nullx",
            "truex",
        ] {
            let mut s = Scanner::new(refused);
            let read = s.string().is_some() || s.integer().is_some() || s.null();
            let read = read || s.boolean().is_some();
            assert!(!read || !s.at_end(), "{refused}");
        }
    }
}

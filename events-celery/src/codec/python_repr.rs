//! The `argsrepr` / `kwargsrepr` headers: Celery's `saferepr` of the arguments, which Celery
//! shows in logs, Flower and `celery inspect`.
//!
//! Mirrors `celery.utils.saferepr.saferepr(value, maxlen=1024)`: Python literal syntax,
//! strings in single quotes with only `'` escaped (other characters are kept raw), containers
//! nested deeper than 3 levels shown as `[...]` / `{...}`, and the text cut after 1024
//! characters with `, ...` and the closing brackets.

use super::json::{Json, JsonMap};

/// Celery's `argsrepr_maxsize` and `kwargsrepr_maxsize`.
const MAX_SIZE: i64 = 1024;
/// `saferepr`'s `maxlevels`.
const MAX_LEVELS: usize = 3;

/// `saferepr(kwargs, 1024)`.
pub(crate) fn kwargs_repr(kwargs: &JsonMap) -> String {
    let mut repr = SafeRepr::new();
    repr.dict(kwargs);
    repr.finish()
}

/// `saferepr(tuple(args), 1024)`.
pub(crate) fn args_repr(args: &[Json]) -> String {
    if args.is_empty() {
        return "()".to_owned();
    }
    let mut repr = SafeRepr::new();
    let end = if args.len() == 1 { ",)" } else { ")" };
    repr.sequence("(", end, args);
    repr.finish()
}

struct SafeRepr {
    out: String,
    budget: i64,
    level: usize,
    closers: Closers,
    exhausted: bool,
}

/// The closing brackets of the open containers: at most `MAX_LEVELS` + 1, kept inline (a
/// deeper stack, which cannot happen, would spill to the heap rather than fail).
#[derive(Default)]
struct Closers {
    inline: [&'static str; MAX_LEVELS + 1],
    len: usize,
    spill: Vec<&'static str>,
}

impl Closers {
    fn push(&mut self, closer: &'static str) {
        if self.len < self.inline.len() {
            self.inline[self.len] = closer;
            self.len += 1;
        } else {
            self.spill.push(closer);
        }
    }

    fn pop(&mut self) -> Option<&'static str> {
        if let Some(closer) = self.spill.pop() {
            return Some(closer);
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }
}

impl SafeRepr {
    fn new() -> Self {
        Self {
            out: String::with_capacity(128),
            budget: MAX_SIZE,
            level: 0,
            closers: Closers::default(),
            exhausted: false,
        }
    }

    fn finish(mut self) -> String {
        if self.exhausted {
            while let Some(closer) = self.closers.pop() {
                self.out.push_str(closer);
            }
        }
        self.out
    }

    /// Emits one token, unless the budget is spent: then `, ...` (and the token is dropped, as
    /// in Python).
    fn token(&mut self, text: &str) -> bool {
        if self.exhausted {
            return false;
        }
        if self.budget <= 0 {
            self.out.push_str(", ...");
            self.exhausted = true;
            return false;
        }
        self.out.push_str(text);
        self.budget -= char_count(text);
        true
    }

    /// A scalar's text, cut by `truncate` when it is as long as what is left of the budget.
    fn text(&mut self, text: &str) {
        if self.exhausted || self.budget <= 0 || char_count(text) < self.budget {
            self.token(text);
        } else {
            let cut = truncate(text, self.budget);
            self.token(&cut);
        }
    }

    fn quoted(&mut self, text: &str) {
        if self.exhausted || self.budget <= 0 {
            self.token("");
            return;
        }
        // The usual case in one pass: ASCII, no `'`, shorter than the budget.
        if let Ok(len) = i64::try_from(text.len())
            && len < self.budget
            && text.bytes().all(|b| b != b'\'' && b.is_ascii())
        {
            self.out.reserve(text.len() + 2);
            self.out.push('\'');
            self.out.push_str(text);
            self.out.push('\'');
            self.budget -= len + 2;
            return;
        }
        let cut;
        let body = if char_count(text) < self.budget {
            text
        } else {
            cut = truncate(text, self.budget);
            cut.as_str()
        };
        // Written straight into the output: `'`, the text with `'` escaped, `'`.
        let quotes = i64::try_from(body.matches('\'').count()).unwrap_or(i64::MAX);
        self.out.push('\'');
        for (index, part) in body.split('\'').enumerate() {
            if index > 0 {
                self.out.push_str("\\'");
            }
            self.out.push_str(part);
        }
        self.out.push('\'');
        self.budget -= char_count(body) + quotes + 2;
    }

    fn value(&mut self, value: &Json) {
        match value {
            Json::Null => self.text("None"),
            Json::Bool(true) => self.text("True"),
            Json::Bool(false) => self.text("False"),
            // Spelled as Python's repr already; Python's repr of the non-finite floats.
            Json::Number(number) => self.text(match number.as_str() {
                "NaN" => "nan",
                "Infinity" => "inf",
                "-Infinity" => "-inf",
                text => text,
            }),
            Json::String(text) => self.quoted(text),
            Json::Array(items) => self.sequence("[", "]", items),
            Json::Object(map) => self.dict(map),
        }
    }

    fn open(&mut self, start: &str, end: &'static str) -> bool {
        if self.level >= MAX_LEVELS {
            let mut elided = String::with_capacity(6);
            elided.push_str(start);
            elided.push_str("...");
            elided.push_str(end);
            self.text(&elided);
            return false;
        }
        self.closers.push(end);
        if !self.token(start) {
            return false;
        }
        self.level += 1;
        true
    }

    fn close(&mut self) {
        if self.exhausted {
            return;
        }
        self.level -= 1;
        if let Some(end) = self.closers.pop() {
            self.token(end);
        }
    }

    fn sequence(&mut self, start: &str, end: &'static str, items: &[Json]) {
        if !self.open(start, end) {
            return;
        }
        for (index, item) in items.iter().enumerate() {
            if index > 0 && !self.token(", ") {
                return;
            }
            self.value(item);
            if self.exhausted {
                return;
            }
        }
        self.close();
    }

    fn dict(&mut self, map: &JsonMap) {
        if !self.open("{", "}") {
            return;
        }
        for (index, (key, item)) in map.iter().enumerate() {
            if index > 0 && !self.token(", ") {
                return;
            }
            self.quoted(key);
            if !self.token(": ") {
                return;
            }
            self.value(item);
            if self.exhausted {
                return;
            }
        }
        self.close();
    }
}

fn char_count(text: &str) -> i64 {
    let count = if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    };
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// `celery.utils.text.truncate(s, maxlen)`: `s[:maxlen].rsplit(' ', 1)[0] + '...'`.
fn truncate(text: &str, max: i64) -> String {
    let max = usize::try_from(max).unwrap_or(0);
    let end = text
        .char_indices()
        .nth(max)
        .map_or(text.len(), |(at, _)| at);
    let head = &text[..end];
    let head = head.rsplit_once(' ').map_or(head, |(before, _)| before);
    let mut cut = String::with_capacity(head.len() + 3);
    cut.push_str(head);
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: serde_json::Value) -> JsonMap {
        match Json::from(value) {
            Json::Object(map) => map,
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn seed_payload_as_celery_writes_it() {
        // serde_json's Map is ordered by key; the fixture's order comes from a typed event.
        let kwargs =
            map(json!({"payload": {"name": "Brake pad", "product_id": "abc-123", "stock": 4}}));
        assert_eq!(
            kwargs_repr(&kwargs),
            "{'payload': {'name': 'Brake pad', 'product_id': 'abc-123', 'stock': 4}}"
        );
    }

    #[test]
    fn scalars_quotes_and_nesting() {
        let kwargs = map(json!({"payload": {
            "control": "tab\tnewline\nquote\"backslash\\ it's",
            "float_small": 1e-7,
            "nested": [1, [2, [3]], {"empty": {}}],
            "null": null,
            "yes": true,
        }}));
        assert_eq!(
            kwargs_repr(&kwargs),
            "{'payload': {'control': 'tab\tnewline\nquote\"backslash\\ it\\'s', \
             'float_small': 1e-07, 'nested': [1, [...], {...}], 'null': None, 'yes': True}}"
        );
    }

    #[test]
    fn args_are_a_tuple() {
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(args_repr(&[7.into()]), "(7,)");
        assert_eq!(args_repr(&["e".into(), Json::Null]), "('e', None)");
    }

    #[test]
    fn long_values_are_cut_at_1024_characters() {
        let long = "word ".repeat(300);
        let kwargs = map(json!({"payload": {"a": long, "b": 1}}));
        let repr = kwargs_repr(&kwargs);
        // `{'payload': {'a': '` is 19 characters; the string is cut to the 1005 left, back to
        // the last space, then the budget is spent and the rest becomes `, ...` + closers.
        let cut = format!("{}...", &long[..1005].rsplit_once(' ').unwrap().0);
        assert_eq!(repr, format!("{{'payload': {{'a': '{cut}', ...}}}}"));
    }
}

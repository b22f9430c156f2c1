//! Whether `#[handler]`'s function sits directly in an `impl` or `trait` block, read from the
//! source file around its name: an attribute cannot see its surroundings, and without this a
//! handler written as a method fails with rustc's "cannot find function" and no hint.
//!
//! Used only to choose a clearer error: when the file cannot be read, or the text around the
//! name is not what was expected, the answer is "not known" and the expansion is the usual one.

use proc_macro2::Ident;

/// What directly encloses an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enclosing {
    Impl,
    Trait,
}

/// The block directly around `ident` (the name of the function), if it is an `impl` or a
/// `trait`; `None` when it is anything else or cannot be told.
pub(crate) fn around(ident: &Ident) -> Option<Enclosing> {
    if !proc_macro::is_available() {
        return None;
    }
    let span = ident.span().unwrap();
    let text = std::fs::read_to_string(span.local_file()?).ok()?;
    let offset = offset_of(&text, span.line(), span.column())?;
    // Not the name where the span says (macro-generated, or the file changed): do not guess.
    if !text[offset..].starts_with(&ident.to_string()) {
        return None;
    }
    innermost_block(&text[..offset])
}

/// The byte offset of a one-based line and (character) column.
fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let start = if line <= 1 {
        0
    } else {
        text.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let rest = &text[start..];
    let skip = column.checked_sub(1)?;
    rest.char_indices().nth(skip).map(|(i, _)| start + i)
}

/// The kind of the innermost `{ … }` still open at the end of `prefix`, when that block is an
/// `impl` or a `trait`. Skips comments, string, character and raw-string literals; `None` for
/// text it does not understand.
fn innermost_block(prefix: &str) -> Option<Enclosing> {
    let bytes = prefix.as_bytes();
    let mut open: Vec<Option<Enclosing>> = Vec::new();
    // The first words of the item or statement since the last `;`, `{` or `}` (outside any
    // brackets), to tell what a `{` opens.
    let mut header: Vec<&str> = Vec::new();
    let mut depth = 0usize; // ( and [ inside the header
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = prefix[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut nesting = 0usize;
                loop {
                    if prefix[i..].starts_with("/*") {
                        nesting += 1;
                        i += 2;
                    } else if prefix[i..].starts_with("*/") {
                        nesting -= 1;
                        i += 2;
                        if nesting == 0 {
                            break;
                        }
                    } else if i < bytes.len() {
                        i += 1;
                    } else {
                        return None;
                    }
                }
            }
            b'"' => i = skip_string(bytes, i + 1)?,
            b'\'' => i = skip_quote(prefix, i)?,
            b'(' | b'[' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            b'{' => {
                open.push(kind(&header));
                header.clear();
                depth = 0;
                i += 1;
            }
            b'}' => {
                open.pop()?;
                header.clear();
                depth = 0;
                i += 1;
            }
            b';' => {
                if depth == 0 {
                    header.clear();
                }
                i += 1;
            }
            c if c == b'_' || c.is_ascii_alphabetic() => {
                let start = i;
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word = &prefix[start..i];
                let hashes = bytes[i..].iter().take_while(|&&b| b == b'#').count();
                match (word, bytes.get(i + hashes)) {
                    // Literal prefixes: r"", r#""#, br"", cr"", b"", c"", b'x'.
                    ("r" | "br" | "cr", Some(b'"')) => i = skip_raw(bytes, i)?,
                    ("b" | "c", Some(b'"')) if hashes == 0 => i = skip_string(bytes, i + 1)?,
                    ("b", Some(b'\'')) if hashes == 0 => i = skip_quote(prefix, i)?,
                    // A raw identifier, `r#impl`: a name, never a keyword.
                    ("r", _) if hashes == 1 => {
                        i += 1;
                        while i < bytes.len()
                            && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric())
                        {
                            i += 1;
                        }
                        if depth == 0 {
                            header.push("r#");
                        }
                    }
                    _ if depth == 0 => header.push(word),
                    _ => {}
                }
            }
            _ if !c.is_ascii() => {
                // Non-ASCII identifiers: one code point at a time, never a delimiter.
                i += prefix[i..].chars().next()?.len_utf8();
            }
            _ => i += 1,
        }
    }
    *open.last()?
}

/// What a `{` opens, from the words before it: an `impl` or `trait` block, or something else.
fn kind(header: &[&str]) -> Option<Enclosing> {
    let first = header.iter().find(|w| {
        !matches!(
            **w,
            "pub" | "crate" | "unsafe" | "default" | "auto" | "safe"
        )
    })?;
    match *first {
        "impl" => Some(Enclosing::Impl),
        "trait" => Some(Enclosing::Trait),
        _ => None,
    }
}

/// Past the closing `"` of a string whose contents start at `i`.
fn skip_string(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Past a raw string whose `#`s or `"` start at `i`.
fn skip_raw(bytes: &[u8], mut i: usize) -> Option<usize> {
    let hashes = bytes[i..].iter().take_while(|&&b| b == b'#').count();
    i += hashes;
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    while i < bytes.len() {
        if bytes[i] == b'"'
            && bytes[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&b| b == b'#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    None
}

/// Past a character literal or a lifetime starting with the `'` at `i`.
fn skip_quote(text: &str, i: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.get(i + 1)? == &b'\\' {
        // An escape (`'\''`, `'\u{7f}'`): up to the closing quote after the escaped character.
        let close = bytes.get(i + 3..)?.iter().position(|&b| b == b'\'')?;
        return Some(i + 3 + close + 1);
    }
    let len = text[i + 1..].chars().next()?.len_utf8();
    if bytes.get(i + 1 + len) == Some(&b'\'') {
        Some(i + 2 + len) // 'x'
    } else {
        Some(i + 1) // a lifetime: its name is read as a word
    }
}

#[cfg(test)]
mod tests {
    use super::{Enclosing, innermost_block, offset_of};

    fn at_marker(source: &str) -> Option<Enclosing> {
        let end = source.find("HERE").expect("a HERE marker");
        innermost_block(&source[..end])
    }

    #[test]
    fn finds_impl_and_trait_blocks() {
        for (source, expected) in [
            (
                "struct S;\nimpl S {\n #[handler]\n fn HERE",
                Some(Enclosing::Impl),
            ),
            (
                "pub(crate) unsafe impl<T: Clone> X for Y<T> where T: Copy { fn HERE",
                Some(Enclosing::Impl),
            ),
            (
                "#[cfg(all())] impl S { fn a() {} #[handler] fn HERE",
                Some(Enclosing::Impl),
            ),
            ("pub trait T { #[handler] fn HERE", Some(Enclosing::Trait)),
            ("#[handler]\nfn HERE", None),
            ("mod m { #[handler] fn HERE", None),
            ("fn f() -> impl Fn() { #[handler] fn HERE", None),
            ("impl S { fn method() { #[handler] fn HERE", None),
            ("impl S { fn a() {} }\nconst _: () = { fn HERE", None),
            ("impl S {} fn HERE", None),
            (
                "impl S { const C: &str = \"}\"; fn HERE",
                Some(Enclosing::Impl),
            ),
            (
                "fn a() { let s = \"{\"; }\nimpl S { fn HERE",
                Some(Enclosing::Impl),
            ),
            ("// impl S {\n/* trait T { /* } */ */ fn HERE", None),
            ("fn a() { let c = '{'; let d = '\\''; } fn HERE", None),
            (
                "fn a<'a>(x: &'a str) { let _ = b'{'; } impl S { fn HERE",
                Some(Enclosing::Impl),
            ),
            (
                "const R: &str = r#\"}\" {\"#; impl S { fn HERE",
                Some(Enclosing::Impl),
            ),
            ("fn r#impl() {} fn HERE", None),
        ] {
            assert_eq!(at_marker(source), expected, "{source}");
        }
    }

    #[test]
    fn unbalanced_text_is_not_guessed() {
        assert_eq!(innermost_block("} impl S { fn "), None);
        assert_eq!(innermost_block("impl S { const C: &str = \"{ fn "), None);
    }

    #[test]
    fn offsets_count_characters_from_one() {
        let text = "ab\nçd fn x";
        assert_eq!(offset_of(text, 1, 1), Some(0));
        assert_eq!(offset_of(text, 2, 1), Some(3));
        assert_eq!(&text[offset_of(text, 2, 7).unwrap()..], "x");
        assert_eq!(offset_of(text, 3, 1), None);
    }
}

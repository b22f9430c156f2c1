//! Parsing of `key = value` arguments shared by both attributes.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Attribute, Item, LitInt, LitStr, Path};

pub(crate) const NAME: &str = "name";
pub(crate) const CRATE: &str = "crate";
pub(crate) const MAX_RETRIES: &str = "max_retries";
pub(crate) const TIME_LIMIT_MS: &str = "time_limit_ms";

/// Collects every error of one macro call, to report them all at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn append(&mut self, other: Errors) {
        if let Some(error) = other.0 {
            self.push(error);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        match &self.0 {
            Some(error) => error.to_compile_error(),
            None => TokenStream::new(),
        }
    }
}

/// An argument that may be given once.
pub(crate) struct Once<T> {
    value: Option<T>,
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Self { value: None }
    }
}

impl<T> Once<T> {
    pub(crate) fn set(
        &mut self,
        meta: &ParseNestedMeta<'_>,
        key: &str,
        value: T,
    ) -> syn::Result<()> {
        if self.value.is_some() {
            return Err(meta.error(format_args!("duplicate argument `{key}`: give it once")));
        }
        self.value = Some(value);
        Ok(())
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// Parses comma-separated `key = value` arguments, calling `each` for every one of them.
///
/// Unlike a single `syn::meta::parser`, a mistake in one argument does not hide the others:
/// every argument is parsed on its own and every error is collected.
pub(crate) fn parse_each(
    args: TokenStream,
    errors: &mut Errors,
    mut each: impl FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    let mut current = TokenStream::new();
    let mut segments = Vec::new();
    for token in args {
        match &token {
            TokenTree::Punct(p) if p.as_char() == ',' => {
                segments.push((std::mem::take(&mut current), Some(p.span())));
            }
            _ => current.extend([token]),
        }
    }
    segments.push((current, None));
    let last = segments.len() - 1;
    for (i, (segment, comma)) in segments.into_iter().enumerate() {
        if segment.is_empty() {
            // A trailing comma (or no arguments at all) is fine; `a,,b` is not.
            if i != last {
                let span = comma.unwrap_or_else(Span::call_site);
                errors.push(syn::Error::new(span, "unexpected `,`: remove it"));
            }
            continue;
        }
        let parser = syn::meta::parser(&mut each);
        if let Err(e) = syn::parse::Parser::parse2(parser, segment) {
            errors.push(e);
        }
    }
}

/// The `crate = path` override, or `::events_core`.
pub(crate) fn crate_path(given: Option<&Path>) -> TokenStream {
    crate_path_at(given, Span::call_site())
}

/// The crate path with `span` on the default `::events_core`, so that an error about generated
/// code that starts with it can point at `span`.
pub(crate) fn crate_path_at(given: Option<&Path>, span: Span) -> TokenStream {
    match given {
        Some(path) => quote!(#path),
        None => quote_spanned!(span=> ::events_core),
    }
}

/// The value after `key =`, or an error saying what to write.
fn value<'a>(
    meta: &'a ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<ParseStream<'a>> {
    if !meta.input.peek(syn::Token![=]) {
        let path = &meta.path;
        return Err(syn::Error::new_spanned(
            path,
            format_args!("`{key}` needs a value: write `{key} = {example}`"),
        ));
    }
    meta.value()
}

/// Everything left in the argument, to point an error at the whole value.
fn rest(input: ParseStream<'_>) -> TokenStream {
    input
        .step(|cursor| {
            let mut rest = TokenStream::new();
            let mut cursor = *cursor;
            while let Some((tt, next)) = cursor.token_tree() {
                rest.extend([tt]);
                cursor = next;
            }
            Ok((rest, cursor))
        })
        .unwrap_or_default()
}

fn wrong_value(input: ParseStream<'_>, message: String) -> syn::Error {
    let tokens = rest(input);
    if tokens.is_empty() {
        input.error(message)
    } else {
        syn::Error::new_spanned(tokens, message)
    }
}

pub(crate) fn parse_crate(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    const EXAMPLE: &str = "my_framework::events_core";
    let input = value(meta, CRATE, EXAMPLE)?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new_spanned(
            &lit,
            format_args!(
                "`crate` takes a path, not a string: write `crate = {}`",
                lit.value()
            ),
        ));
    }
    let fork = input.fork();
    match Path::parse_mod_style(&fork) {
        Ok(_) if fork.is_empty() => Path::parse_mod_style(input),
        _ => Err(wrong_value(
            input,
            format!("`crate` takes the path to `events_core`, e.g. `crate = {EXAMPLE}`"),
        )),
    }
}

pub(crate) fn parse_str(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
) -> syn::Result<LitStr> {
    let example = format!("{example:?}");
    let input = value(meta, key, &example)?;
    let fork = input.fork();
    match fork.parse::<LitStr>() {
        Ok(_) if fork.is_empty() => input.parse(),
        _ => Err(wrong_value(
            input,
            format!("`{key}` takes a string literal, e.g. `{key} = {example}`"),
        )),
    }
}

/// A whole number from 0 to `max`, as `key = 3`.
pub(crate) fn parse_int<N>(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
    max: N,
) -> syn::Result<(N, Span)>
where
    N: TryFrom<u64> + std::fmt::Display,
{
    let input = value(meta, key, example)?;
    let tokens: TokenStream = input.fork().parse()?;
    let lit = match input.parse::<LitInt>() {
        Ok(lit) if input.is_empty() => lit,
        _ => {
            let _ = rest(input);
            let message = if tokens.to_string().starts_with('-') {
                format!("`{key}` cannot be negative: give a whole number, e.g. `{key} = {example}`")
            } else {
                format!("`{key}` takes a whole number, e.g. `{key} = {example}`")
            };
            return Err(syn::Error::new_spanned(tokens, message));
        }
    };
    if !lit.suffix().is_empty() {
        return Err(syn::Error::new_spanned(
            &lit,
            format_args!(
                "`{key}` takes a plain number: remove the `{}` suffix",
                lit.suffix()
            ),
        ));
    }
    if lit.base10_digits().starts_with('-') {
        return Err(syn::Error::new_spanned(
            tokens,
            format_args!(
                "`{key}` cannot be negative: give a whole number, e.g. `{key} = {example}`"
            ),
        ));
    }
    match lit
        .base10_parse::<u64>()
        .ok()
        .and_then(|n| N::try_from(n).ok())
    {
        Some(n) => Ok((n, lit.span())),
        None => Err(syn::Error::new_spanned(
            &lit,
            format_args!("`{key}` is too large: the most is {max}"),
        )),
    }
}

pub(crate) fn unknown(meta: &ParseNestedMeta<'_>, expected: &[&str]) -> syn::Error {
    let path = &meta.path;
    let given = path.to_token_stream().to_string().replace(' ', "");
    let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    syn::Error::new_spanned(
        path,
        format_args!(
            "unknown argument `{given}`, expected one of: {}",
            expected.join(", ")
        ),
    )
}

/// Checks a name given as `name = "..."`: not empty, no white space, no control characters.
pub(crate) fn check_name(lit: &LitStr, what: &str, example: &str) -> syn::Result<String> {
    let value = lit.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            lit,
            format_args!("{what} name is empty: give a non-empty name such as {example:?}"),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        let kind = if c.is_control() {
            "a control character"
        } else {
            "white space"
        };
        return Err(syn::Error::new_spanned(
            lit,
            format_args!(
                "{what} name {value:?} contains {kind} ({c:?}): use letters, digits, `.`, `_` or `-`, e.g. {example:?}"
            ),
        ));
    }
    Ok(value)
}

/// The keyword to point at and what the item is, for "goes on …" errors.
pub(crate) fn item_kind(item: &Item) -> (Span, &'static str) {
    match item {
        Item::Fn(f) => (f.sig.fn_token.span, "a function"),
        Item::Struct(s) => (s.struct_token.span, "a struct"),
        Item::Enum(e) => (e.enum_token.span, "an enum"),
        Item::Union(u) => (u.union_token.span, "a union"),
        Item::Trait(t) => (t.trait_token.span, "a trait"),
        Item::Type(t) => (t.type_token.span, "a type alias"),
        Item::Impl(i) => (i.impl_token.span, "an impl block"),
        Item::Mod(m) => (m.mod_token.span, "a module"),
        Item::Const(c) => (c.const_token.span, "a constant"),
        Item::Static(s) => (s.static_token.span, "a static"),
        Item::Use(u) => (u.use_token.span, "a `use` declaration"),
        other => (other.span(), "this item"),
    }
}

/// Takes out of `attrs` every further `#[name]` (bare, or by a path through `events_core`), with
/// an error at each: a second expansion would only repeat the generated items.
pub(crate) fn remove_repeats(attrs: &mut Vec<Attribute>, name: &str, errors: &mut Errors) {
    attrs.retain(|attr| {
        let path = attr.path();
        let repeat = path.segments.last().is_some_and(|s| s.ident == name)
            && (path.segments.len() == 1 || path.segments.iter().any(|s| s.ident == "events_core"));
        if repeat {
            errors.push(syn::Error::new_spanned(
                attr,
                format_args!("`#[{name}]` is written twice: remove this one"),
            ));
        }
        !repeat
    });
}

//! Parsing of `key = value` arguments shared by both attributes.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{LitInt, LitStr, Path};

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

/// The `crate = path` override, or `::events_core`.
pub(crate) fn crate_path(given: Option<Path>) -> TokenStream {
    match given {
        Some(path) => quote!(#path),
        None => quote!(::events_core),
    }
}

pub(crate) fn parse_crate(meta: &ParseNestedMeta<'_>) -> syn::Result<Path> {
    meta.value()?.parse::<Path>()
}

pub(crate) fn parse_str(meta: &ParseNestedMeta<'_>) -> syn::Result<LitStr> {
    meta.value()?.parse::<LitStr>()
}

pub(crate) fn parse_int<N>(meta: &ParseNestedMeta<'_>) -> syn::Result<(N, Span)>
where
    N: std::str::FromStr,
    N::Err: std::fmt::Display,
{
    let lit = meta.value()?.parse::<LitInt>()?;
    Ok((lit.base10_parse::<N>()?, lit.span()))
}

pub(crate) fn unknown(meta: &ParseNestedMeta<'_>, expected: &[&str]) -> syn::Error {
    let path = &meta.path;
    let given = quote!(#path).to_string().replace(' ', "");
    let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    meta.error(format_args!(
        "unknown argument `{given}`, expected one of: {}",
        expected.join(", ")
    ))
}

/// Checks a name given as `name = "..."`: not empty, no white space, no control characters.
pub(crate) fn check_name(lit: &LitStr, what: &str) -> syn::Result<String> {
    let value = lit.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            lit,
            format_args!(
                "{what} name is empty: give a non-empty name such as \"orders.order_placed\""
            ),
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
                "{what} name {value:?} contains {kind} ({c:?}): use letters, digits, `.`, `_` or `-`, e.g. \"orders.order_placed\""
            ),
        ));
    }
    Ok(value)
}

//! `#[domain_event]`: serde derives, the `DomainEvent` impl and the registry entry.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Field, Fields, Ident, Item, LitStr, Path, Type};

use crate::attr::{self, CRATE, Errors, NAME, Once};

struct Args {
    name: Option<(String, LitStr)>,
    krate: Option<Path>,
}

/// The example shown in errors about `name`.
const NAME_EXAMPLE: &str = "orders.order_placed";

fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut name = Once::default();
    let mut krate = Once::default();
    attr::parse_each(args, errors, |meta| {
        if meta.path.is_ident(NAME) {
            let lit = attr::parse_str(&meta, NAME, NAME_EXAMPLE)?;
            name.set(&meta, NAME, lit.clone())?;
            attr::check_name(&lit, "event", NAME_EXAMPLE).map(drop)
        } else if meta.path.is_ident(CRATE) {
            let path = attr::parse_crate(&meta)?;
            krate.set(&meta, CRATE, path)
        } else {
            Err(attr::unknown(&meta, &[NAME, CRATE]))
        }
    });
    // Checked (and reported) above; keep only a valid name.
    let name = name.get().and_then(|lit: LitStr| {
        let value = attr::check_name(&lit, "event", NAME_EXAMPLE).ok()?;
        Some((value, lit))
    });
    Args {
        name,
        krate: krate.get(),
    }
}

/// The default event name: the type's name in snake case (`ProductCreated` → `product_created`,
/// `HTTPRequestSent` → `http_request_sent`).
fn snake_case(ident: &Ident) -> String {
    let name = ident.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(char::is_lowercase),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn derives(attrs: &[Attribute], trait_name: &str) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive"))
        .any(|a| {
            let mut found = false;
            let _ = a.parse_nested_meta(|meta| {
                if meta
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == trait_name)
                {
                    found = true;
                }
                Ok(())
            });
            found
        })
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let mut item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            errors.push(e);
            return with_errors(&input, &errors);
        }
    };
    match &mut item {
        Item::Struct(s) => attr::remove_repeats(&mut s.attrs, "domain_event", &mut errors),
        Item::Enum(e) => attr::remove_repeats(&mut e.attrs, "domain_event", &mut errors),
        _ => {}
    }
    let (ident, attrs, generics) = match &item {
        Item::Struct(s) => (s.ident.clone(), &s.attrs, &s.generics),
        Item::Enum(e) => (e.ident.clone(), &e.attrs, &e.generics),
        Item::Union(u) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                "`#[domain_event]` goes on a struct or an enum, not on a union: serde cannot \
                 serialize a union",
            ));
            return with_errors(&item, &errors);
        }
        other => {
            let (span, kind) = attr::item_kind(other);
            errors.push(syn::Error::new(
                span,
                format_args!("`#[domain_event]` goes on a struct or an enum, not on {kind}"),
            ));
            return with_errors(&item, &errors);
        }
    };
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            generics,
            "a domain event cannot be generic: it needs one stable name and one concrete \
             type, so declare one type per event, e.g. `struct OrderPlaced { .. }`",
        ));
        // No impl for a generic type, so the error above is the only one.
        return with_errors(&item, &errors);
    }

    let fields = checked_fields(&item);
    let borrowed = borrowing_fields(&fields);
    if !borrowed.is_empty() {
        // serde cannot derive `DeserializeOwned` for it: no derives, no impl, one error each.
        for error in borrowed {
            errors.push(error);
        }
        return with_errors(&item, &errors);
    }

    let krate = attr::crate_path(args.krate.as_ref());
    let name = match &args.name {
        Some((_, lit)) => quote!(#lit),
        None => {
            let default = snake_case(&ident);
            quote!(#default)
        }
    };
    let serde_path = format!("{}::__private::serde", krate).replace(' ', "");
    let mut derive = Vec::new();
    if !derives(attrs, "Serialize") {
        derive.push(quote!(#krate::__private::serde::Serialize));
    }
    if !derives(attrs, "Deserialize") {
        derive.push(quote!(#krate::__private::serde::Deserialize));
    }
    // Deriving both: each field goes through `EventField` (`serialize_with`/`deserialize_with`),
    // so a field serde cannot handle gets our error alone, at the field. Else (the user derives
    // one of them): a check at each field's type, with our error before serde's own.
    let field_checks: Vec<TokenStream> = if derive.len() == 2 {
        Vec::new()
    } else {
        fields
            .iter()
            .map(|field| {
                let ty = &field.ty;
                quote_spanned! {ty.span()=>
                    #krate::__private::EventDescriptor::assert_field::<#ty>();
                }
            })
            .collect()
    };
    if derive.len() == 2 {
        let krate_text = krate.to_token_stream().to_string().replace(' ', "");
        for field in checked_fields_mut(&mut item) {
            route_through_event_field(field, &krate_text);
        }
    }
    let serde_attrs = if derive.is_empty() {
        TokenStream::new()
    } else {
        quote! {
            #[derive(#(#derive),*)]
            #[serde(crate = #serde_path)]
        }
    };
    let location = quote_spanned! {ident.span()=>
        #krate::__private::SourceLocation { file: ::core::file!(), line: ::core::line!() }
    };
    let compile_errors = errors.to_compile_errors();
    quote! {
        const _: () = {
            #[allow(dead_code, reason = "only type-checked")]
            fn __events_fields() {
                #(#field_checks)*
            }
        };

        #serde_attrs
        #item

        const _: () = {
            #[#krate::__private::distributed_slice(#krate::__private::EVENTS)]
            #[linkme(crate = #krate::__private::linkme)]
            static __EVENTS_DESCRIPTOR: #krate::__private::EventDescriptor =
                #krate::__private::EventDescriptor::new::<#ident>(
                    #location,
                    ::core::env!("CARGO_CRATE_NAME"),
                );

            #[automatically_derived]
            impl #krate::__private::DeclaredEvent for #ident {}

            #[automatically_derived]
            impl #krate::__private::DomainEvent for #ident {
                const NAME: &'static str = #name;

                #[inline]
                fn descriptor() -> &'static #krate::__private::EventDescriptor {
                    &__EVENTS_DESCRIPTOR
                }
            }
        };

        #compile_errors
    }
}

/// Gives `field` serde attributes that (de)serialise it through `EventField`: what serde's derive
/// does, with our error when its type cannot be (de)serialised. A missing `Option` field still
/// reads as `None` (`default`), as serde's derive does without `deserialize_with`.
fn route_through_event_field(field: &mut Field, krate: &str) {
    let span = field.ty.span();
    let ser = LitStr::new(&format!("{krate}::__private::serialize_field"), span);
    let de = LitStr::new(&format!("{krate}::__private::deserialize_field"), span);
    let default = is_option(&field.ty).then(|| quote!(, default));
    field.attrs.push(syn::parse_quote! {
        #[serde(serialize_with = #ser, deserialize_with = #de #default)]
    });
}

/// Whether `ty` is written as an `Option` (`Option<T>`, `std::option::Option<T>`, …).
fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Option" && !s.arguments.is_empty()),
        Type::Group(g) => is_option(&g.elem),
        Type::Paren(p) => is_option(&p.elem),
        _ => false,
    }
}

/// [`checked_fields`], to change.
fn checked_fields_mut(item: &mut Item) -> Vec<&mut Field> {
    let all: Vec<&mut Field> = match item {
        Item::Struct(s) => s.fields.iter_mut().collect(),
        Item::Enum(e) => e
            .variants
            .iter_mut()
            .filter(|v| !v.attrs.iter().any(|a| a.path().is_ident("serde")))
            .flat_map(|v| match &mut v.fields {
                Fields::Named(f) => f.named.iter_mut().collect::<Vec<_>>(),
                Fields::Unnamed(f) => f.unnamed.iter_mut().collect(),
                Fields::Unit => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    all.into_iter().filter(|f| is_checked(f)).collect()
}

/// The fields whose type must be serde-serialisable: those without `#[serde(...)]` attributes
/// of their own (`skip`, `with`, … change what serde needs) and not naming `Self`.
fn checked_fields(item: &Item) -> Vec<&Field> {
    let all: Vec<&Field> = match item {
        Item::Struct(s) => s.fields.iter().collect(),
        Item::Enum(e) => e
            .variants
            .iter()
            .filter(|v| !v.attrs.iter().any(|a| a.path().is_ident("serde")))
            .flat_map(|v| match &v.fields {
                Fields::Named(f) => f.named.iter().collect::<Vec<_>>(),
                Fields::Unnamed(f) => f.unnamed.iter().collect(),
                Fields::Unit => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    all.into_iter().filter(|f| is_checked(f)).collect()
}

/// Whether serde handles `field` as its type says: no `#[serde(...)]` of its own, not naming
/// `Self`.
fn is_checked(field: &Field) -> bool {
    !field.attrs.iter().any(|a| a.path().is_ident("serde"))
        && !tokens_any(
            field.ty.to_token_stream(),
            &|t| matches!(t, TokenTree::Ident(i) if i == "Self"),
        )
}

/// An error at each field type that borrows (`&'static str`, `Option<&[u8]>`): an event is
/// deserialised from a message that does not outlive it, so it owns its data.
fn borrowing_fields(fields: &[&Field]) -> Vec<syn::Error> {
    fields
        .iter()
        .filter(|f| {
            tokens_any(
                f.ty.to_token_stream(),
                &|t| matches!(t, TokenTree::Punct(p) if p.as_char() == '&'),
            )
        })
        .map(|f| {
            let hint = match &f.ty {
                Type::Reference(r) if r.elem.to_token_stream().to_string() == "str" => {
                    "`String`".to_owned()
                }
                _ => "`String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`".to_owned(),
            };
            syn::Error::new_spanned(
                &f.ty,
                format_args!(
                    "a domain event owns its data, so a field cannot borrow: use an owned type \
                     ({hint})"
                ),
            )
        })
        .collect()
}

fn tokens_any(tokens: TokenStream, found: &dyn Fn(&TokenTree) -> bool) -> bool {
    tokens.into_iter().any(|t| match &t {
        TokenTree::Group(g) => tokens_any(g.stream(), found),
        other => found(other),
    })
}

fn with_errors(item: &impl quote::ToTokens, errors: &Errors) -> TokenStream {
    let compile_errors = errors.to_compile_errors();
    quote!(#item #compile_errors)
}

#[cfg(test)]
mod tests {
    use super::snake_case;
    use proc_macro2::Span;
    use syn::Ident;

    #[test]
    fn default_names_are_snake_case() {
        for (ty, name) in [
            ("ProductCreated", "product_created"),
            ("HTTPRequestSent", "http_request_sent"),
            ("Order2Placed", "order2_placed"),
            ("Pinged", "pinged"),
            ("already_snake", "already_snake"),
            ("V2Launched", "v2_launched"),
        ] {
            assert_eq!(snake_case(&Ident::new(ty, Span::call_site())), name, "{ty}");
        }
    }
}

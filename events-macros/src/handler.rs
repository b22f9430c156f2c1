//! `#[handler]`: checks the signature and registers the function in the handler slice.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Path, ReturnType, Safety, Type};

use crate::attr::{self, CRATE, Errors, MAX_RETRIES, NAME, Once, TIME_LIMIT_MS};

const KEYS: &[&str] = &[NAME, CRATE, MAX_RETRIES, TIME_LIMIT_MS];

struct Args {
    name: Option<String>,
    krate: Option<Path>,
    max_retries: Option<u32>,
    time_limit_ms: Option<u64>,
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut name = Once::default();
    let mut krate = Once::default();
    let mut max_retries = Once::default();
    let mut time_limit_ms = Once::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident(NAME) {
            let lit: LitStr = attr::parse_str(&meta)?;
            name.set(&meta, NAME, lit)
        } else if meta.path.is_ident(CRATE) {
            let path = attr::parse_crate(&meta)?;
            krate.set(&meta, CRATE, path)
        } else if meta.path.is_ident(MAX_RETRIES) {
            let (n, _) = attr::parse_int::<u32>(&meta)?;
            max_retries.set(&meta, MAX_RETRIES, n)
        } else if meta.path.is_ident(TIME_LIMIT_MS) {
            let (n, span) = attr::parse_int::<u64>(&meta)?;
            if n == 0 {
                return Err(syn::Error::new(
                    span,
                    "`time_limit_ms` must be at least 1 (leave it out for no limit)",
                ));
            }
            time_limit_ms.set(&meta, TIME_LIMIT_MS, n)
        } else {
            Err(attr::unknown(&meta, KEYS))
        }
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    let name = name
        .get()
        .and_then(|lit| match attr::check_name(&lit, "handler") {
            Ok(value) => Some(value),
            Err(e) => {
                errors.push(e);
                None
            }
        });
    Args {
        name,
        krate: krate.get(),
        max_retries: max_retries.get(),
        time_limit_ms: time_limit_ms.get(),
    }
}

/// How the handler takes its event.
enum Taking {
    Reference,
    Value,
}

/// Checks the signature; returns the event type and how it is taken.
fn check_signature(f: &ItemFn, errors: &mut Errors) -> Option<(Type, Taking)> {
    let sig = &f.sig;
    if let Safety::Unsafe(token) = &sig.safety {
        errors.push(syn::Error::new_spanned(
            token,
            "a handler cannot be `unsafe`: wrap the unsafe code in a safe function",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a handler cannot have an explicit ABI: remove the `extern`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a handler cannot be generic: write one handler per event type, taking `&MyEvent`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "a handler takes exactly one parameter, the event",
        ));
    }
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "a handler cannot take `self`: make it a free function taking the event, e.g. \
                 `fn on_order_placed(event: &OrderPlaced)`",
            )),
            FnArg::Typed(pat) => typed.push(pat),
        }
    }
    let event = match typed.as_slice() {
        [] if sig.receiver().is_none() => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a handler takes exactly one parameter, the event: add it, e.g. \
                 `(event: &OrderPlaced)`",
            ));
            None
        }
        [] => None,
        [one] => Some(one),
        [_, extra @ ..] => {
            let mut tokens = TokenStream::new();
            for pat in extra {
                pat.to_tokens(&mut tokens);
            }
            errors.push(syn::Error::new_spanned(
                tokens,
                format_args!(
                    "a handler takes exactly one parameter, the event, but this one takes {}: \
                     remove the others (read shared state from a `static` or the event itself)",
                    typed.len()
                ),
            ));
            None
        }
    }?;
    match &*event.ty {
        Type::Reference(reference) => {
            if let Some(mutability) = &reference.mutability {
                errors.push(syn::Error::new_spanned(
                    mutability,
                    "a handler cannot take the event by `&mut`: every handler sees the same \
                     event, so take `&Event` (or `Event` to get your own clone)",
                ));
                return None;
            }
            if let Type::ImplTrait(t) = &*reference.elem {
                errors.push(syn::Error::new_spanned(
                    t,
                    "a handler cannot be generic: name the event type",
                ));
                return None;
            }
            Some(((*reference.elem).clone(), Taking::Reference))
        }
        Type::ImplTrait(t) => {
            errors.push(syn::Error::new_spanned(
                t,
                "a handler cannot be generic: name the event type",
            ));
            None
        }
        other => Some((other.clone(), Taking::Value)),
    }
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let function: ItemFn = match syn::parse2(input.clone()) {
        Ok(f) => f,
        Err(_) => {
            errors.push(syn::Error::new(
                input.span(),
                "`#[handler]` goes on a function taking the event, e.g. \
                 `fn on_order_placed(event: &OrderPlaced)`",
            ));
            let compile_errors = errors.to_compile_errors();
            return quote!(#input #compile_errors);
        }
    };
    let checked = check_signature(&function, &mut errors);
    let compile_errors = errors.to_compile_errors();
    let Some((event_ty, taking)) = checked else {
        return quote!(#function #compile_errors);
    };
    let generics = &function.sig.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        // Generated code could not name the generic parameters: report the error alone.
        return quote!(#function #compile_errors);
    }

    let krate = attr::crate_path(args.krate);
    let private = quote!(#krate::__private);
    let fn_ident = &function.sig.ident;
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#fn_ident)
        )),
    };
    let ty_span = event_ty.span();
    let argument = match taking {
        Taking::Reference => quote_spanned!(ty_span=> #private::downcast::<#event_ty>(event)),
        Taking::Value => quote_spanned!(ty_span=> #private::by_value::<#event_ty>(event)),
    };
    let result_span = match &function.sig.output {
        ReturnType::Default => fn_ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let (call, kind) = if function.sig.asyncness.is_some() {
        (
            quote_spanned! {result_span=>
                fn __events_call<'a>(
                    event: &'a (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
                ) -> #private::BoxFuture<'a, #private::HandlerResult> {
                    #private::boxed(#fn_ident(#argument))
                }
            },
            quote!(#private::HandlerFn::Async(__events_call)),
        )
    } else {
        (
            quote_spanned! {result_span=>
                fn __events_call(
                    event: &(dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
                ) -> #private::HandlerResult {
                    #private::IntoHandlerResult::into_handler_result(#fn_ident(#argument))
                }
            },
            quote!(#private::HandlerFn::Sync(__events_call)),
        )
    };
    let max_retries = match args.max_retries {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let time_limit = match args.time_limit_ms {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let descriptor = quote_spanned! {ty_span=>
        #private::HandlerDescriptor::new::<#event_ty>
    };
    let location = quote_spanned! {fn_ident.span()=>
        #private::SourceLocation { file: ::core::file!(), line: ::core::line!() }
    };
    quote! {
        #function

        const _: () = {
            #call

            #[#private::distributed_slice(#private::HANDLERS)]
            #[linkme(crate = #private::linkme)]
            static __EVENTS_HANDLER: #private::HandlerDescriptor = #descriptor(
                #name,
                #kind,
                #location,
                ::core::env!("CARGO_CRATE_NAME"),
                #private::HandlerOptions::new(#max_retries, #time_limit),
            );
        };

        #compile_errors
    }
}

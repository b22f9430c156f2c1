//! `#[handler]`: checks the signature and registers the function in the handler slice.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Path, ReturnType, Safety, Type};

use crate::attr::{self, CRATE, Errors, MAX_RETRIES, NAME, Once, TIME_LIMIT_MS};
use crate::context::{self, Enclosing};

const KEYS: &[&str] = &[NAME, CRATE, MAX_RETRIES, TIME_LIMIT_MS];

struct Args {
    name: Option<String>,
    krate: Option<Path>,
    max_retries: Option<u32>,
    time_limit_ms: Option<u64>,
}

/// The example shown in errors about `name`.
const NAME_EXAMPLE: &str = "billing.send_invoice";

fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut name = Once::default();
    let mut krate = Once::default();
    let mut max_retries = Once::default();
    let mut time_limit_ms = Once::default();
    attr::parse_each(args, errors, |meta| {
        if meta.path.is_ident(NAME) {
            let lit: LitStr = attr::parse_str(&meta, NAME, NAME_EXAMPLE)?;
            name.set(&meta, NAME, lit.clone())?;
            attr::check_name(&lit, "handler", NAME_EXAMPLE).map(drop)
        } else if meta.path.is_ident(CRATE) {
            let path = attr::parse_crate(&meta)?;
            krate.set(&meta, CRATE, path)
        } else if meta.path.is_ident(MAX_RETRIES) {
            let (n, _) = attr::parse_int(&meta, MAX_RETRIES, "3", u32::MAX)?;
            max_retries.set(&meta, MAX_RETRIES, n)
        } else if meta.path.is_ident(TIME_LIMIT_MS) {
            let (n, span) = attr::parse_int(&meta, TIME_LIMIT_MS, "30000", u64::MAX)?;
            if n == 0 {
                return Err(syn::Error::new(
                    span,
                    "`time_limit_ms` must be at least 1: leave it out for no limit",
                ));
            }
            time_limit_ms.set(&meta, TIME_LIMIT_MS, n)
        } else {
            Err(attr::unknown(&meta, KEYS))
        }
    });
    // Checked (and reported) above; keep only a valid name.
    let name = name
        .get()
        .and_then(|lit: LitStr| attr::check_name(&lit, "handler", NAME_EXAMPLE).ok());
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

/// What the generated code needs from a valid signature.
struct Signature {
    /// The event type, without the `&`.
    event: Type,
    taking: Taking,
    /// The declared return type; `None` for `()`.
    output: Option<Type>,
}

/// Checks the signature; returns `None` after pushing an error for each mistake.
fn check_signature(f: &ItemFn, errors: &mut Errors) -> Option<Signature> {
    let mut mistakes = Errors::default();
    let sig = &f.sig;
    if let Safety::Unsafe(token) = &sig.safety {
        mistakes.push(syn::Error::new_spanned(
            token,
            "a handler cannot be `unsafe`: remove `unsafe` and put the unsafe code in an \
             `unsafe { .. }` block inside it",
        ));
    }
    if let Some(abi) = &sig.abi {
        mistakes.push(syn::Error::new_spanned(
            abi,
            "a handler cannot have an explicit ABI: remove the `extern`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let tokens = match &sig.generics.where_clause {
            Some(clause) if sig.generics.params.is_empty() => clause.to_token_stream(),
            _ => sig.generics.to_token_stream(),
        };
        mistakes.push(syn::Error::new_spanned(
            tokens,
            "a handler cannot be generic: write one handler per event type, e.g. \
             `fn on_order_placed(event: &OrderPlaced)`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        mistakes.push(syn::Error::new_spanned(
            variadic,
            "a handler takes exactly one parameter, the event: remove the `...`",
        ));
    }
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => mistakes.push(syn::Error::new_spanned(
                receiver,
                "a handler cannot take `self`: make it a free function taking the event, e.g. \
                 `fn on_order_placed(event: &OrderPlaced)`",
            )),
            FnArg::Typed(pat) => typed.push(pat),
        }
    }
    let event = match typed.as_slice() {
        [] if sig.receiver().is_none() && sig.variadic.is_none() => {
            mistakes.push(syn::Error::new(
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
            mistakes.push(syn::Error::new_spanned(
                tokens,
                format_args!(
                    "a handler takes exactly one parameter, the event, but this one takes {}: \
                     remove the others (read shared state from a `static` or the event itself)",
                    typed.len()
                ),
            ));
            None
        }
    };
    let taken = event.and_then(|event| match &*event.ty {
        Type::Reference(reference) => {
            if let Some(lifetime) = reference.lifetime.as_ref().filter(|l| l.ident == "static") {
                let ty = reference
                    .elem
                    .to_token_stream()
                    .to_string()
                    .replace(" :: ", "::");
                mistakes.push(syn::Error::new_spanned(
                    lifetime,
                    format_args!(
                        "a handler borrows the event only while it runs, so it cannot take it \
                         as `&'static`: write `&{ty}`, or `{ty}` to get your own clone"
                    ),
                ));
                return None;
            }
            if let Some(mutability) = &reference.mutability {
                mistakes.push(syn::Error::new_spanned(
                    mutability,
                    "a handler cannot take the event by `&mut`: every handler sees the same \
                     event, so take `&Event` (or `Event` to get your own clone)",
                ));
                return None;
            }
            if let Type::ImplTrait(t) = &*reference.elem {
                mistakes.push(impl_trait_parameter(t));
                return None;
            }
            Some(((*reference.elem).clone(), Taking::Reference))
        }
        Type::ImplTrait(t) => {
            mistakes.push(impl_trait_parameter(t));
            None
        }
        other => Some((other.clone(), Taking::Value)),
    });
    let output = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => match &**ty {
            Type::ImplTrait(t) => {
                let message = if sig.asyncness.is_some() {
                    "a handler cannot return `impl Trait`: return `()` or `Result<(), E>`"
                } else {
                    "a handler cannot return `impl Trait`: to return a future, write \
                     `async fn` and return `()` or `Result<(), E>`"
                };
                mistakes.push(syn::Error::new_spanned(t, message));
                None
            }
            other => Some(other.clone()),
        },
    };
    let ok = mistakes.is_empty();
    errors.append(mistakes);
    let (event, taking) = taken?;
    ok.then_some(Signature {
        event,
        taking,
        output,
    })
}

fn impl_trait_parameter(t: &syn::TypeImplTrait) -> syn::Error {
    syn::Error::new_spanned(
        t,
        "a handler cannot be generic: name the event type, e.g. `event: &OrderPlaced`",
    )
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let mut function: ItemFn = match syn::parse2(input.clone()) {
        Ok(f) => f,
        Err(_) => {
            let (span, kind) = match syn::parse2::<syn::Item>(input.clone()) {
                Ok(item) => attr::item_kind(&item),
                Err(_) => (input.span(), "this item"),
            };
            errors.push(syn::Error::new(
                span,
                format_args!(
                    "`#[handler]` goes on a function taking the event, not on {kind}: write e.g. \
                     `fn on_order_placed(event: &OrderPlaced)`"
                ),
            ));
            let compile_errors = errors.to_compile_errors();
            return quote!(#input #compile_errors);
        }
    };
    attr::remove_repeats(&mut function.attrs, "handler", &mut errors);
    let checked = check_signature(&function, &mut errors);
    let compile_errors = errors.to_compile_errors();
    let Some(Signature {
        event: event_ty,
        taking,
        output,
    }) = checked
    else {
        // Generated code for a wrong signature would only add errors: report the mistakes alone.
        return quote!(#function #compile_errors);
    };

    let fn_ident = &function.sig.ident;
    if let Some(enclosing) = context::around(fn_ident) {
        // The generated registration cannot name an associated function (it would fail with
        // "cannot find function"): say what to do instead, and generate nothing else.
        let block = match enclosing {
            Enclosing::Impl => "an `impl` block",
            Enclosing::Trait => "a trait",
        };
        errors.push(syn::Error::new_spanned(
            fn_ident,
            format_args!(
                "`#[handler]` goes on a free function, not on a function in {block}: move \
                 `{fn_ident}` out of it, e.g. to the module (the bus calls a handler with the \
                 event alone, never on a value of a type)"
            ),
        ));
        let compile_errors = errors.to_compile_errors();
        return quote!(#function #compile_errors);
    }
    let krate = attr::crate_path(args.krate.as_ref());
    let private = quote!(#krate::__private);
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(
            ::core::module_path!(),
            "::",
            ::core::stringify!(#fn_ident)
        )),
    };
    let ty_span = event_ty.span();
    // One identifier for the parameter and its uses, whatever spans surround them.
    let event = Ident::new("__events_event", Span::call_site());
    // Checked (and converted) at the parameter's type: `downcast` and `by_value` need no
    // `DomainEvent` bound, so a type that is not an event gets exactly one error, from
    // `HandlerDescriptor::new` below.
    let argument = match taking {
        Taking::Reference => quote_spanned!(ty_span=> #private::downcast::<#event_ty>(#event)),
        Taking::Value => quote_spanned!(ty_span=> #private::by_value::<#event_ty>(#event)),
    };
    // The return type is checked where the user wrote it.
    let convert = match &output {
        Some(ty) => quote_spanned!(ty.span()=>
            <#ty as #private::IntoHandlerResult>::into_handler_result
        ),
        None => quote!(<() as #private::IntoHandlerResult>::into_handler_result),
    };
    let (call, kind) = match &function.sig.asyncness {
        Some(asyncness) => {
            // A future that is not `Send` is reported at the `async` keyword.
            let krate = attr::crate_path_at(args.krate.as_ref(), asyncness.span);
            let boxed = quote_spanned! {asyncness.span=>
                #krate::__private::boxed(async move { #convert(#fn_ident(#argument).await) })
            };
            (
                quote! {
                    fn __events_call<'a>(
                        #event: &'a (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
                    ) -> #private::BoxFuture<'a, #private::HandlerResult> {
                        #boxed
                    }
                },
                quote!(#private::HandlerFn::Async(__events_call)),
            )
        }
        None => (
            quote! {
                fn __events_call(
                    #event: &(dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
                ) -> #private::HandlerResult {
                    #convert(#fn_ident(#argument))
                }
            },
            quote!(#private::HandlerFn::Sync(__events_call)),
        ),
    };
    let max_retries = match args.max_retries {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let time_limit = match args.time_limit_ms {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    // The one place that needs `DomainEvent`, at the parameter's type.
    let descriptor = quote_spanned! {ty_span=>
        #private::HandlerDescriptor::new::<#event_ty>
    };
    let guard = format_ident!("__events_handler_{}", fn_ident);
    let location = quote_spanned! {fn_ident.span()=>
        #private::SourceLocation { file: ::core::file!(), line: ::core::line!() }
    };
    quote! {
        #function

        // Named, not `_`, so that a handler inside an `impl` gets one error, at its name.
        #[allow(non_upper_case_globals)]
        const #guard: () = {
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

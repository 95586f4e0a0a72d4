//! Expanding `#[subscriber]`: the user's function unchanged, plus a const
//! block holding the adapter the runtime calls and the `inventory`
//! registration. Generated code names only `<crate>::__private::...`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens as _};
use syn::spanned::Spanned as _;
use syn::{FnArg, ItemFn, ReturnType};

use crate::args::{self, Args, Errors};

pub(crate) fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(args, &mut errors);
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let e = syn::Error::new(e.span(), "#[subscriber] goes on an `async fn`");
            let err = e.to_compile_error();
            return quote!(#item #err);
        }
    };
    check_signature(&func, &mut errors);
    match errors.into_result() {
        Ok(()) => {
            let registration = register(&args, &func);
            quote!(#func #registration)
        }
        // The function as written, so IDEs keep working, plus every error.
        Err(e) => {
            let err = e.to_compile_error();
            quote!(#func #err)
        }
    }
}

fn check_signature(func: &ItemFn, errors: &mut Errors) {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push_at(
            sig.fn_token.span(),
            "kconc handlers must be `async fn`: add `async` before `fn`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push_at(
            sig.generics.span(),
            "kconc handlers cannot be generic: the runtime calls one concrete function; remove the type parameters",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push_at(v.span(), "kconc handlers cannot be variadic");
    }
    for arg in &sig.inputs {
        if let FnArg::Receiver(r) = arg {
            errors.push_at(
                r.span(),
                "kconc handlers cannot take `self`: make it a free `async fn` and reach shared state through a static or the message",
            );
            return;
        }
    }
    if sig.inputs.len() != 1 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs.span()
        };
        errors.push_at(
            span,
            format!(
                "kconc handlers take exactly one argument, the message (`kconc_runtime::Message`); this one takes {}",
                sig.inputs.len()
            ),
        );
    }
}

fn register(args: &Args, func: &ItemFn) -> TokenStream {
    let krate = args
        .krate
        .as_ref()
        .map_or_else(|| quote!(::kconc_runtime), |p| p.to_token_stream());
    let p = quote!(#krate::__private);
    let ident = &func.sig.ident;
    let name = args.name.as_ref().map_or_else(
        || {
            quote!(::core::concat!(
                ::core::module_path!(),
                "::",
                ::core::stringify!(#ident)
            ))
        },
        |n| quote!(#n),
    );
    let topics = &args.topics;
    let group = &args.group;
    let opt_usize = |v: &Option<syn::LitInt>| match v {
        Some(i) => {
            let n: usize = i.base10_parse().unwrap_or(1);
            quote_spanned!(i.span()=> #p::Some(#n))
        }
        None => quote!(#p::None),
    };
    let opt_ms = |v: Option<u64>| match v {
        Some(ms) => quote!(#p::Some(#p::Duration::from_millis(#ms))),
        None => quote!(#p::None),
    };
    let concurrency = opt_usize(&args.concurrency);
    let commit_batch_size = opt_usize(&args.commit_batch_size);
    let commit_interval = opt_ms(args.commit_interval_ms);
    let shutdown_timeout = opt_ms(args.shutdown_timeout_ms);

    // Checks whose errors land on the user's code rather than on ours.
    let arg_check = func.sig.inputs.first().and_then(|a| match a {
        FnArg::Typed(t) => {
            let ty = &t.ty;
            Some(quote_spanned!(ty.span()=> let message: #ty = message;))
        }
        FnArg::Receiver(_) => None,
    });
    let output_check = match &func.sig.output {
        ReturnType::Default => quote!(),
        ReturnType::Type(_, ty) => quote_spanned!(ty.span()=> #p::assert_handler_output::<#ty>();),
    };
    // Spanned at the function's name: a non-`Send` future (or an output that
    // is not a handler result) is reported there.
    let boxed = quote_spanned!(ident.span()=> #p::into_handler_future(future));

    quote! {
        #[doc(hidden)]
        const _: () = {
            fn __kconc_adapter(message: #p::Message) -> #p::HandlerFuture {
                #arg_check
                #output_check
                let future = #ident(message);
                #boxed
            }
            #p::inventory::submit! {
                #p::Registration {
                    name: #name,
                    topics: &[#(#topics),*],
                    group: #group,
                    concurrency: #concurrency,
                    commit_batch_size: #commit_batch_size,
                    commit_interval: #commit_interval,
                    shutdown_timeout: #shutdown_timeout,
                    handler: __kconc_adapter,
                    file: ::core::file!(),
                    line: ::core::line!(),
                }
            }
        };
    }
}

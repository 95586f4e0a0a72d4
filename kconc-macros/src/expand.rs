//! Expanding `#[subscriber]`: the user's function unchanged, plus a const
//! block holding the adapter the runtime calls and the `inventory`
//! registration. Generated code names only `<crate>::__private::...`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::{Ident, ItemFn, LitStr, ReturnType};

use crate::args::{self, Args, Value};
use crate::signature;

/// The whole expansion. On any mistake: the function exactly as written (so
/// IDEs and the rest of the crate keep working) plus every error, and no
/// registration.
pub(crate) fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item.clone()) {
        Ok(expanded) => expanded,
        Err(e) => {
            let errors = e.to_compile_error();
            quote!(#item #errors)
        }
    }
}

fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = args::parse(args);
    let func = syn::parse2::<ItemFn>(item.clone()).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("#[subscriber] goes on an `async fn` taking the message ({e})"),
        )
    });
    let (args, func) = match (args, func) {
        (Ok(args), Ok(func)) => {
            signature::check(&func)?;
            if signature::batch_argument(&func).is_none() {
                check_batch_options(&args)?;
                signature::check_reply(&func, args.options.iter().any(|(s, _)| s.key == "reply"))?;
            }
            (args, func)
        }
        (Err(mut e), Ok(func)) => {
            if let Err(more) = signature::check(&func) {
                e.combine(more);
            }
            return Err(e);
        }
        (Err(mut e), Err(more)) => {
            e.combine(more);
            return Err(e);
        }
        (Ok(_), Err(e)) => return Err(e),
    };
    check_store(&args, &func)?;
    let registration = registration(&args, &func);
    Ok(quote!(#item #registration))
}

/// The options only a batch handler takes are refused on a handler of one
/// message.
fn check_batch_options(args: &Args) -> syn::Result<()> {
    match args.batch_only.first() {
        Some((key, span)) => Err(syn::Error::new(
            *span,
            format!(
                "`{key}` applies to batch handlers only: take the messages as `Batch<T>` (for example \
                 `orders: Batch<Json<Order>>`), or remove `{key}`"
            ),
        )),
        None => Ok(()),
    }
}

/// `store = "sql"` and a `Tx` argument come together.
fn check_store(args: &Args, func: &ItemFn) -> syn::Result<()> {
    match (args.store_sql, signature::tx_argument(func)) {
        (Some(span), None) => Err(syn::Error::new(
            span,
            "`store = \"sql\"` needs the handler to take the transaction its writes go through: add an argument \
             `mut tx: Tx<Sqlite>` (or `Tx<Postgres>`, from `kconc_runtime::sql`) and write with `&mut *tx`",
        )),
        (None, Some(i)) => {
            let ty = signature::argument_types(func).nth(i);
            Err(syn::Error::new(
                ty.map_or(Span::call_site(), |t| t.span()),
                "a `Tx` argument needs `store = \"sql\"` in #[subscriber(..)]: kconc then commits the handler's \
                 writes and the message's offset in this one transaction",
            ))
        }
        _ => Ok(()),
    }
}

fn registration(args: &Args, func: &ItemFn) -> TokenStream {
    let p = private(args, Span::call_site());
    let ident = &func.sig.ident;

    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let fn_name = LitStr::new(&ident.unraw().to_string(), ident.span());
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let topics = &args.topics;
    let group = &args.group;
    // Each option becomes a call of the runtime builder's setter of the
    // same name, its value as the setter takes it; literals keep their
    // spans, so a mistake the macro did not catch is still reported at the
    // attribute.
    let mut calls = Vec::new();
    for (setting, value) in &args.options {
        let span = match value {
            Value::AtLeastOne(n) => n.span(),
            Value::Text(s) => s.span(),
            _ => Span::call_site(),
        };
        let setter = Ident::new(setting.key, span);
        let arg = match value {
            Value::AtLeastOne(n) => quote!(#n),
            Value::WholeNumber(n) => quote!(#n),
            Value::Millis(ms) => quote!(#p::Duration::from_millis(#ms)),
            Value::Variant(ty, variant) => {
                let (ty, variant) = (Ident::new(ty, span), Ident::new(variant, span));
                quote!(#p::#ty::#variant)
            }
            Value::Text(s) => quote!(#s),
        };
        calls.push(quote_spanned!(span=> .#setter(#arg)));
    }
    if args.on_error.as_ref().map(LitStr::value).as_deref() == Some("stop") {
        calls.push(quote!(.on_error(#p::OnError::Stop)));
    }

    // The type checks are spanned at the user's code, so their errors land
    // there and not on the attribute: a wrong argument type at the
    // argument's type; a non-`Send` future or an unsupported output at the
    // return type (at the name if there is none). The adapter's locals carry
    // those spans too (a mixed-site span would move the errors back to the
    // attribute), and a `kconc_` prefix, so a handler named `message` is
    // still the function called.
    let message = local("message", ident.span());
    let cx = local("cx", ident.span());
    let slot = local("slot", ident.span());
    let handler = local("handler", ident.span());
    let types: Vec<&syn::Type> = signature::argument_types(func).collect();
    let requirements = state_requirements(args, &types);
    let mut descriptions = descriptions(args, &types);
    // With `reply`, what the handler returns is the reply's payload.
    if let (true, ReturnType::Type(_, ty)) = (args.options.iter().any(|(s, _)| s.key == "reply"), &func.sig.output) {
        descriptions.push(reply_description(args, ty));
    }
    // The database of the `Tx` argument, from its type (an error there if
    // it names none kconc supports).
    let sql_store = signature::tx_argument(func).and_then(|i| types.get(i)).map(|ty| {
        let p_ty = private(args, ty.span());
        quote_spanned!(ty.span()=> .sql_store(<#ty as #p_ty::TxArg>::spec()))
    });
    let output_span = match &func.sig.output {
        ReturnType::Default => ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    // One call checks both that the future is `Send` and that its output is
    // a handler result, so a mistake is reported once.
    let future = local("future", output_span);
    let p_output = private(args, output_span);
    let mut args_names = Vec::new();
    let mut extractions = Vec::new();
    let (adapter, registrar) = if let Some(at) = signature::batch_argument(func) {
        // A batch handler: each other argument built from the context
        // first, then the batch from the messages (a message that cannot be
        // built fails alone, named in the mapping).
        let mapping = local("mapping", ident.span());
        let count = local("count", ident.span());
        let mut batch_extraction = quote!();
        for (i, ty) in types.iter().enumerate() {
            let name = local(&format!("arg{i}"), ty.span());
            let p_ty = private(args, ty.span());
            if i == at {
                batch_extraction = quote_spanned!(ty.span()=>
                    let (#name, #mapping) = <#ty>::build(#message, #cx);
                );
            } else {
                extractions.push(quote_spanned! {ty.span()=>
                    let #name = match <#ty as #p_ty::FromBatchContext>::from_batch_context(#cx) {
                        #p::Ok(value) => value,
                        #p::Err(error) => return #p::batch_extraction_failed(error, #count),
                    };
                });
            }
            args_names.push(name);
        }
        let count_line = if extractions.is_empty() {
            quote!()
        } else {
            quote!(let #count = #message.len();)
        };
        let boxed = quote_spanned!(output_span=> #p_output::into_batch_future(#future, #mapping));
        let adapter = quote! {
            fn __kconc_adapter(#message: #p::Vec<#p::Message>, #cx: &#p::Context) -> #p::BatchFuture {
                #count_line
                #(#extractions)*
                #batch_extraction
                let #handler = #ident;
                let #future = #handler(#(#args_names),*);
                #boxed
            }
        };
        (adapter, quote!(#p::registered_batch_subscriber))
    } else {
        // Each argument is extracted from the message, the last one by
        // value (it may be the whole `Message`). The extractor call is
        // spanned at the argument's type, so a type that is not an
        // extractor is reported there.
        for (i, ty) in types.iter().enumerate() {
            let name = local(&format!("arg{i}"), ty.span());
            let p_ty = private(args, ty.span());
            let call = if i + 1 == types.len() {
                quote_spanned!(ty.span()=> <#ty as #p_ty::FromMessageOwned>::from_message_owned(#message, #cx))
            } else {
                quote_spanned!(ty.span()=> <#ty as #p_ty::FromMessage>::from_message(&#message, #cx))
            };
            extractions.push(quote! {
                let #name = match #call {
                    #p::Ok(value) => value,
                    #p::Err(error) => return #p::extraction_failed(error, #slot),
                };
            });
            args_names.push(name);
        }
        let unused = if types.is_empty() {
            quote!(let _ = (#message, #cx);)
        } else {
            quote!()
        };
        // With `reply`, the handler's future ends only once what it
        // returned is published and acknowledged; the input's key, offset
        // and trace headers are read before the handler takes the message.
        let replies = args.options.iter().any(|(s, _)| s.key == "reply");
        let origin = local("origin", ident.span());
        let (read_origin, boxed) = if replies {
            (
                quote!(let #origin = #p::ReplyOrigin::of(&#message);),
                quote_spanned!(output_span=> #p_output::into_reply_future(#future, #cx, #origin, #slot)),
            )
        } else {
            (
                quote!(),
                quote_spanned!(output_span=> #p_output::into_handler_future(#future, #slot)),
            )
        };
        let adapter = quote! {
            fn __kconc_adapter(#message: #p::Message, #cx: &#p::Context, #slot: &mut #p::FutureSlot) {
                #read_origin
                #(#extractions)*
                #unused
                // Named as a value, not only called: the attribute is what
                // requires `async`, so clippy's `unused_async` must not fire.
                let #handler = #ident;
                let #future = #handler(#(#args_names),*);
                #boxed
            }
        };
        (adapter, quote!(#p::registered_subscriber))
    };

    quote! {
        #[doc(hidden)]
        const _: () = {
            #adapter
            fn __kconc_build() -> #p::Subscriber {
                #registrar(
                    #name,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    &[#(#topics),*],
                    #group,
                    __kconc_adapter,
                    ::core::file!(),
                    ::core::line!(),
                )
                #(#requirements)*
                #(#descriptions)*
                #sql_store
                #(#calls)*
            }
            #p::inventory::submit! {
                #p::Registration { build: __kconc_build }
            }
        };
    }
}

/// Each `State<T>` argument is recorded, so a state the app does not
/// provide fails at start-up naming the handler and `T`; other arguments
/// record nothing (and, asked of no trait, add no error).
fn state_requirements(args: &Args, types: &[&syn::Type]) -> Vec<TokenStream> {
    let p = private(args, Span::call_site());
    types
        .iter()
        .map(|ty| {
            quote! {
                .requires_state({
                    use #p::{TakesNoState as _, TakesState as _};
                    // The borrows pick the trait (see `StateProbe`).
                    #[allow(clippy::needless_borrow)]
                    let required = (&&#p::StateProbe::<#ty>::new()).required_state();
                    required
                })
            }
        })
        .collect()
}

/// What each argument says of the message, for the AsyncAPI document: a
/// `Json<T>` (or `Option<Json<T>>`, `Batch<Json<T>>`) its payload type, a
/// `Key<T>` its key type, each with its schema when `T` derives
/// `JsonSchema`; other arguments say nothing (and, asked of no trait, add
/// no error).
fn descriptions(args: &Args, types: &[&syn::Type]) -> Vec<TokenStream> {
    types.iter().map(|ty| describe(args, "DescribeProbe", ty)).collect()
}

/// What the handler's return type says of its replies: a `Json<T>` (also
/// in a `Result`, `Option` or `Vec`) gives their payload type, with its
/// schema when `T` derives `JsonSchema`.
fn reply_description(args: &Args, ty: &syn::Type) -> TokenStream {
    describe(args, "ReplyProbe", ty)
}

/// The setter call recording what `probe` (`DescribeProbe` or
/// `ReplyProbe`) of `ty` says.
fn describe(args: &Args, probe: &str, ty: &syn::Type) -> TokenStream {
    let p = private(args, Span::call_site());
    let probe = Ident::new(probe, Span::call_site());
    quote! {
        .describes({
            use #p::{DescribedWithSchema as _, DescribedWithoutSchema as _, DescribesNothing as _};
            // The borrows pick the trait (see `DescribeProbe`).
            #[allow(clippy::needless_borrow)]
            let described = (&&&#p::#probe::<#ty>::new()).describes();
            described
        })
    }
}

/// The path of the runtime's `__private` module: under `::kconc_runtime`, or
/// under the `crate = ".."` path (which keeps the literal's span, so a path
/// that does not resolve is reported there).
fn private(args: &Args, span: Span) -> TokenStream {
    match &args.krate {
        Some(krate) => quote!(#krate::__private),
        None => quote_spanned!(span=> ::kconc_runtime::__private),
    }
}

/// A local of the adapter, reported at `at`.
fn local(name: &str, at: Span) -> Ident {
    Ident::new(&format!("kconc_{name}"), at)
}

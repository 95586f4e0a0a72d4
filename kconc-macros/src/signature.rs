//! Checking that the function under `#[subscriber]` is one the runtime can
//! call: a free, non-generic `async fn` taking up to 16 extractors.
//!
//! The argument's and the output's *types* are checked by the compiler, on
//! the user's spans, by code that `expand` generates.

use syn::spanned::Spanned as _;
use syn::{FnArg, ItemFn, Type};

use crate::errors::Errors;

/// The most arguments a handler may take.
const MAX_ARGS: usize = 16;

/// `Ok` if the signature has the shape of a handler, else an error for each
/// mistake, spanned at the offending token.
pub(crate) fn check(func: &ItemFn) -> syn::Result<()> {
    let mut errors = Errors::default();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.push_at(
            sig.fn_token.span(),
            "kconc handlers must be `async fn`; add `async` before `fn`",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push_at(
            unsafety.span(),
            "kconc handlers cannot be `unsafe fn`: the runtime calls them with no safety contract; remove `unsafe` and use an `unsafe` block inside",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push_at(
            sig.generics.span(),
            "kconc handlers cannot be generic: the runtime calls one concrete function; remove the generic parameters",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push_at(v.span(), "kconc handlers cannot be variadic");
    }
    let receiver = sig.inputs.iter().find_map(|arg| match arg {
        FnArg::Receiver(r) => Some(r),
        FnArg::Typed(_) => None,
    });
    if let Some(r) = receiver {
        errors.push_at(
            r.span(),
            "kconc handlers cannot take `self`: make it a free `async fn` (outside the `impl`) and reach shared state through a `static`",
        );
    } else if sig.inputs.len() > MAX_ARGS {
        errors.push_at(
            sig.inputs.span(),
            format!(
                "kconc handlers take at most {MAX_ARGS} arguments (extractors such as `Json<T>`, `Key<T>`, `Meta`); this one takes {}",
                sig.inputs.len()
            ),
        );
    }
    let batches: Vec<&Type> = argument_types(func).filter(|ty| named(ty, "Batch")).collect();
    if let [_, second, ..] = batches[..] {
        errors.push_at(
            second.span(),
            "a batch handler takes one `Batch<T>`: build each message into one `T` (a struct, or `Message` to read it \
             all), and take the rest as `State<T>` or `Context`",
        );
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(t) = arg {
            if let Type::ImplTrait(_) = &*t.ty {
                errors.push_at(
                    t.ty.span(),
                    "kconc handlers cannot be generic: name a concrete extractor type (`Json<Order>`, `Text`, `Message`, ...), not `impl Trait`",
                );
            }
        }
    }
    errors.finish(())
}

/// The position of the handler's `Batch<..>` argument, if it takes one (a
/// batch handler). Recognised by the type's last path segment, as written.
pub(crate) fn batch_argument(func: &ItemFn) -> Option<usize> {
    argument_types(func).position(|ty| named(ty, "Batch"))
}

/// The index of the argument written `Tx<..>` (the transaction of
/// `store = "sql"`), if there is one.
pub(crate) fn tx_argument(func: &ItemFn) -> Option<usize> {
    argument_types(func).position(|ty| named(ty, "Tx"))
}

/// The types of the function's arguments, in order.
pub(crate) fn argument_types(func: &ItemFn) -> impl Iterator<Item = &Type> {
    func.sig.inputs.iter().filter_map(|arg| match arg {
        FnArg::Typed(t) => Some(&*t.ty),
        FnArg::Receiver(_) => None,
    })
}

/// Whether `ty` is written `name<..>` (or a path ending so).
fn named(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == name))
}

/// A handler without `reply = ".."` whose return type names something only a
/// reply publishes (`Json<T>`, `Bytes`, `Text`, `Reply`, `Payload`, or an
/// `Option`, `Vec` or `Result` of one): an error that says to add `reply`.
/// (A type alias hides it from this check; the compiler's error on the
/// return type says the same in a note.)
pub(crate) fn check_reply(func: &ItemFn, has_reply: bool) -> syn::Result<()> {
    let syn::ReturnType::Type(_, ty) = &func.sig.output else {
        return Ok(());
    };
    if has_reply || !publishes(ty) {
        return Ok(());
    }
    let shown = quote::ToTokens::to_token_stream(&**ty)
        .to_string()
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace("< ", "<")
        .replace(" ,", ",");
    Err(syn::Error::new(
        ty.span(),
        format!(
            "`{}` returns `{shown}`, which only a reply publishes: add `reply = \"topic\"` to #[subscriber(..)] to send it \
             there, or return `()` or `Result<(), E>`",
            func.sig.ident
        ),
    ))
}

/// Whether `ty` is (an `Option`, `Vec` or `Result` of) a reply type.
fn publishes(ty: &Type) -> bool {
    let Type::Path(p) = ty else {
        return false;
    };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    match last.ident.to_string().as_str() {
        "Json" | "Bytes" | "Text" | "Reply" | "Payload" => true,
        "Option" | "Vec" | "Result" => match &last.arguments {
            syn::PathArguments::AngleBracketed(a) => match a.args.first() {
                Some(syn::GenericArgument::Type(inner)) => publishes(inner),
                _ => false,
            },
            _ => false,
        },
        _ => false,
    }
}

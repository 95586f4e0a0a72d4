//! The `#[subscriber]` attribute of kconc. Use it through `kconc-runtime`,
//! which re-exports it: `use kconc_runtime::subscriber;`.
//!
//! ```ignore
//! #[kconc_runtime::subscriber(topic = "orders", group = "billing", concurrency = 20)]
//! async fn bill(order: kconc_runtime::Message) -> anyhow::Result<()> {
//!     Ok(())
//! }
//! ```
//!
//! Every option is checked at compile time; each mistake is an error at the
//! offending token, all reported in one compile, and the function is still
//! emitted so IDEs keep working. The modules, in the order the macro runs
//! them: `args` reads the options, `signature` checks the function's shape,
//! `expand` generates the adapter and the registration.

mod args;
mod errors;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Registers an `async fn` as a Kafka handler run by `kconc-runtime`.
///
#[doc = include_str!(concat!(env!("OUT_DIR"), "/options.md"))]
///
/// Durations are written `"500ms"`, `"2s"` or `"1m"`.
///
/// The function's arguments are extractors (`Json<T>`, `Text`, `Bytes`,
/// `Key<T>`, `Headers`, `Meta`, `Context`, `State<T>`, the whole `Message`
/// last, or any `kconc_runtime::FromMessage` type); it returns `()` or
/// `Result<(), E>` where `E` converts into a boxed error. With `reply`, it
/// returns what to publish (`Json<T>`, `Bytes`, `Text`, `Reply`, `Option`
/// or `Vec` of these, or a `Result` of one), and its message counts as
/// finished once the broker has acknowledged every reply.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::subscriber(args.into(), item.into()).into()
}

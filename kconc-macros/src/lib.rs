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
//! Every option is checked at compile time; a mistake is an error pointing at
//! the offending token, and the function is still emitted so IDEs keep
//! working. See the `kconc-runtime` documentation for what each option does.

mod args;
mod expand;

use proc_macro::TokenStream;

/// Registers an `async fn` as a Kafka handler run by `kconc-runtime`.
///
/// Options: `topic = ".."` or `topics = ["..", ..]`, `group = ".."` (both
/// required), `concurrency = N`, `ordering = "unordered"`,
/// `commit_batch_size = N`, `commit_interval = "1s"`,
/// `shutdown_timeout = "20s"`, `name = ".."`, `crate = "path"`.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::subscriber(args.into(), item.into()).into()
}

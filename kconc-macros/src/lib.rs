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
/// Options: `topic = ".."` or `topics = ["..", ..]`, `group = ".."` (both
/// required), `concurrency = N`, `ordering = "unordered" | "key" |
/// "partition"`, `first_poll = "worker" | "poll_thread" | "auto"`,
/// `max_buffered = N`, `max_uncommitted = N`, `handler_timeout = "30s"`,
/// `commit_batch_size = N`, `commit_interval = "1s"`,
/// `commit_metadata = "finished" | "none"` (whether commits record the
/// finished offsets above them, for the next owner to skip),
/// `instance_id = ".."` (static group membership),
/// `shutdown_timeout = "20s"`, `revoke_timeout = "10s"` (durations in
/// `ms`, `s` or `m`), `retries =
/// N`, `backoff = ".."`, `max_backoff = ".."`, `on_error = "skip" | "stop" |
/// "dead_letter"`, `dead_letter = "topic"`, `reply = "topic"` (publish
/// what the handler returns there),
/// `name = ".."` (default: the function's path), `crate = "path"` (for a
/// renamed `kconc-runtime` dependency).
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

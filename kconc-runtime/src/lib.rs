//! kconc: consume Kafka concurrently without losing or skipping messages.
//!
//! Write a handler as a plain async function, put `#[subscriber]` on it, and
//! end the program with `kconc_runtime::main!();`:
//!
//! ```no_run
//! use kconc_runtime::{subscriber, Message};
//!
//! #[subscriber(topic = "orders", group = "billing", concurrency = 20)]
//! async fn bill(order: Message) -> Result<(), std::io::Error> {
//!     println!("order at offset {}", order.offset());
//!     Ok(())
//! }
//!
//! kconc_runtime::main!();
//! ```
//!
//! Up to `concurrency` handlers run at once per subscriber. An offset is
//! committed only when it and every offset before it in its partition has
//! finished, so a crash, a rebalance or a shutdown may redeliver messages but
//! never skips one. Commits are batched by count and time, and made
//! synchronously on revoke and shutdown.
//!
//! Mistakes are compile errors at the offending token. A handler argument
//! that is not an extractor, for example:
//!
//! ```compile_fail,E0277
//! use kconc_runtime::{subscriber, Meta};
//!
//! #[subscriber(topic = "orders", group = "billing")]
//! async fn bill(meta: Meta, count: u32) {}
//! # fn main() {}
//! ```
//!
//! ```text
//! error[E0277]: `u32` cannot be an argument of a kconc handler
//!   |
//! 4 | async fn bill(meta: Meta, count: u32) {}
//!   |                                  ^^^ not an extractor
//!   = note: handler arguments are built from the message: use `Message`, `Json<T>`,
//!           `Text`, `Bytes`, `Key<T>`, `Headers`, `Meta`, `Context` or `Option<..>`
//!           of some of these; or implement `kconc_runtime::FromMessage` for `u32`
//! ```
//!
//! # Where things are
//!
//! Users reach everything through the crate root (and [`testing`] in
//! tests); the modules are private, listed here in the order a message
//! meets them:
//!
//! - `registry`: the handlers `#[subscriber]` registered, built into
//!   [`Subscriber`]s;
//! - `subscriber`: a subscriber and its settings (the builder the attribute
//!   expands to);
//! - `config`: the command line ([`Cli`]), the property layers (code, file,
//!   environment, flags) and what is refused;
//! - `secret`: which properties are secrets, so nothing prints them;
//! - `embedded`: the in-process mock cluster ([`EmbeddedCluster`]);
//! - `app`: [`App`] starts the subscribers (after its start-up hooks),
//!   [`Running`] runs and stops them (then its shutdown hooks);
//! - `engine`: the poll loop that fetches, schedules, runs, completes and
//!   commits (its files are listed in flow order in its own module doc);
//! - `message`, `extract`, `context`, `state`, `handler`: what a handler
//!   receives ([`Message`], the extractors, [`Context`], [`State`]) and
//!   what it returns; `batch`: a batch handler's [`Batch`] and
//!   [`BatchOutcome`]; `reply`: what a handler with `reply = ".."` returns,
//!   published before its message finishes;
//! - `policy`: what a failed message comes to (retry, dead letter, skip,
//!   stop);
//! - `stats`: the counters, each declared once;
//! - `watch`: whether the cluster answers and the subscribed topics exist;
//! - `health`: liveness, readiness, `/metrics` and the HTTP endpoint;
//! - `signal`: SIGINT and SIGTERM;
//! - `error`: [`Error`], why an app could not start;
//! - [`testing`]: the test harness ([`testing::TestApp`]: the program's
//!   subscribers on a fresh embedded cluster), a handler's arguments built
//!   from a message, a producer, end and committed offsets.

#![warn(missing_docs)]

/// The `#[subscriber]` attribute: registers an async fn as a handler.
pub use kconc_macros::subscriber;

/// The rdkafka crate kconc runs on, for producing and for fault injection in tests.
pub use ::rdkafka;
/// The `schemars` kconc builds the AsyncAPI document's schemas with: derive
/// `JsonSchema` for a handler's `Json<T>` or `Key<T>` type (with `schemars`
/// 1.x as a dependency of your own, or `#[schemars(crate =
/// "kconc_runtime::schemars")]`) and the document has its schema.
pub use ::schemars;

// In the order a message meets them (the crate doc above says more).
mod registry; // the handlers `#[subscriber]` registered, built
mod subscriber; // a subscriber and its settings (the builder)
mod config; // the command line and the property layers
mod secret; // which properties are secrets
mod embedded; // the in-process mock cluster
mod app; // starting, running and stopping
mod engine; // poll, fetch, schedule, run, complete, commit
mod message; // the message a handler gets
mod extract; // handler arguments built from it
mod context; // the handler's context
mod state; // the app's state, which handlers take as `State<T>`
mod handler; // the erased handler and its result
mod batch; // batch handlers: their argument and outcome
mod reply; // what a handler with `reply = ".."` returns, published
mod policy; // what a failure comes to
mod stats; // the counters, each declared once
mod telemetry; // the spans and metrics of calls, sends and commits
mod watch; // cluster reachability, missing topics
mod health; // health, readiness, metrics, HTTP
mod asyncapi; // the AsyncAPI document of the subscribers
mod describe; // what a handler's arguments say of its messages
mod signal; // SIGINT and SIGTERM
mod error; // why an app could not start
pub mod testing; // the test harness and helpers for tests and demos
pub mod sql; // exactly once into a database: `Tx`, kconc's offset table
#[cfg(feature = "otel")]
pub mod otel; // OpenTelemetry: installing the exporters

pub use app::{App, Running, Setup, ShutdownHandle, StatsHandle, SHUTDOWN_MARGIN};
pub use batch::{Batch, BatchOutcome, FromBatchContext, IntoBatchResult};
pub use config::{
    init_tracing, init_tracing_with, AsyncApiFormat, Cli, CliCommand, ProduceArgs, TraceRelation, EMBEDDED,
};
pub use context::Context;
pub use context::ProducerHooks;
pub use embedded::EmbeddedCluster;
pub use engine::HandlerTimedOut;
pub use error::{Error, SettingError};
pub use extract::{Bytes, FromKey, FromMessage, FromMessageOwned, Headers, Json, Key, Meta, Payload, State, Text};
pub use handler::{BoxError, Handler, IntoHandlerResult};
pub use health::{Health, HealthThresholds, StalledPartition, SubscriberHealth};
pub use message::{Header, Message, PayloadError};
pub use policy::{NonRetryable, OnError};
pub use reply::{IntoReplies, Reply};
pub use stats::{PartitionPause, StatsSnapshot, StoppedPartition};
pub use subscriber::{CommitMetadata, FirstPoll, GroupProtocol, OffsetStore, OrderingMode, Subscriber};

/// Generates the program's `main`: runs every `#[subscriber]` until SIGINT or
/// SIGTERM, then shuts down gracefully. `--help` lists the flags;
/// `--brokers`/`KCONC_BROKERS` say where the cluster is (default
/// `localhost:9092`; `embedded` starts an in-process mock cluster).
///
/// Options, in any order, each at most once:
///
/// - `state = f`: `async fn f(Setup) -> Result<T, E>` builds a value
///   handlers take as [`State<T>`] (see [`App::state_from`]); if it fails,
///   the program exits non-zero with its error before joining any group.
///   Give several with `state = f, state = g` for several types.
/// - `on_start = f`: `async fn f(Setup) -> Result<(), E>`, run once at
///   start-up ([`App::on_start`]).
/// - `on_stop = f`: `async fn f(Setup) -> Result<(), E>`, run once after
///   the drain and final commit ([`App::on_stop`]); a failure makes the
///   exit code 1.
/// - `default_brokers = "embedded"`: changes the default brokers, for
///   examples that must run on a machine with no Kafka.
///
/// ```no_run
/// #[derive(Clone)]
/// struct Db;
///
/// async fn connect(_: kconc_runtime::Setup) -> Result<Db, std::io::Error> {
///     Ok(Db)
/// }
///
/// async fn close(setup: kconc_runtime::Setup) -> Result<(), std::io::Error> {
///     let _db: Option<Db> = setup.state();
///     Ok(())
/// }
///
/// kconc_runtime::main!(state = connect, on_stop = close);
/// ```
#[macro_export]
macro_rules! main {
    ($($option:ident = $value:expr),* $(,)?) => {
        fn main() -> ::std::process::ExitCode {
            $crate::__private::run_main($crate::__private::MainOptions::new() $(.$option($value))*)
        }
    };
}

/// Not public API: what the code generated by `#[subscriber]` and `main!()` names.
#[doc(hidden)]
pub mod __private {
    pub use ::inventory;
    pub use ::std::boxed::Box;
    pub use ::std::option::Option::{None, Some};
    pub use ::std::time::Duration;
    pub use ::std::vec::Vec;

    pub use crate::context::Context;
    pub use crate::extract::{FromMessage, FromMessageOwned};
    pub use crate::handler::{FutureSlot, IntoHandlerResult};
    pub use crate::message::{Message, PayloadError};
    pub use crate::subscriber::{CommitMetadata, FirstPoll, GroupProtocol, OffsetStore, OrderingMode};
    pub use ::std::result::Result::{Err, Ok};

    /// The call of a handler whose arguments could not be extracted: the
    /// message fails with the extractor's error (and goes to the error policy).
    pub fn extraction_failed(error: PayloadError, slot: &mut FutureSlot) {
        let error: crate::handler::BoxError = Box::new(crate::message::Undecodable(error));
        slot.set(::std::future::ready(Err(error)));
    }
    pub use crate::policy::OnError;
    pub use crate::registry::Registration;
    pub use crate::subscriber::Subscriber;

    pub use crate::registry::registered_subscriber;

    /// The commit metadata of `finished` (sorted offsets) above `base`, and
    /// whether it had to be cut to fit; for `kconc-bench --metadata`.
    pub fn encode_finished(base: i64, finished: &[i64]) -> Option<(String, bool)> {
        crate::engine::encode_finished(base, finished)
    }

    /// How many offsets the metadata lists as finished above `base`.
    pub fn decode_finished(metadata: &[u8], base: i64) -> u64 {
        crate::engine::finished_count(metadata, base)
    }
    pub use crate::batch::{
        batch_extraction_failed, into_batch_future, Batch, BatchEnd, BatchFuture, BatchMapping, FromBatchContext,
        IntoBatchResult,
    };
    pub use crate::describe::{
        DescribeProbe, DescribedWithSchema, DescribedWithoutSchema, Describes, DescribesNothing, ReplyProbe,
    };
    pub use crate::extract::{StateProbe, TakesNoState, TakesState};
    pub use crate::registry::registered_batch_subscriber;
    pub use crate::reply::{into_reply_future, ReplyOrigin};
    pub use crate::sql::TxArg;

    /// Puts the future of a user's handler, as the erased type, in the
    /// call's slot.
    pub fn into_handler_future<Fut>(fut: Fut, slot: &mut FutureSlot)
    where
        Fut: ::std::future::Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        slot.set_handler(fut);
    }

    pub use crate::app::MainOptions;

    /// The command line's definition (for kconc's own tests of its docs).
    pub fn command() -> clap::Command {
        crate::config::Cli::command_with_default_brokers(None)
    }

    /// The body of the `main` that `main!()` generates.
    pub fn run_main(options: MainOptions) -> ::std::process::ExitCode {
        crate::app::run_main(options)
    }
}

//! Handlers: what a subscriber runs for each message, and how its outcome is read.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use crate::batch::{BatchFuture, IntoBatchResult};
use crate::context::Context;
use crate::message::Message;

/// The error type a handler's failure is reduced to.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Where a call's future is kept: one box, reused by the next call (of a
/// future of the same size and alignment, which every call of one handler
/// is) instead of an allocation per message. Each place of a worker keeps
/// the box of its call that ended for its next one. Not public API: the code
/// `#[subscriber]` generates writes into it.
#[doc(hidden)]
#[derive(Default)]
pub struct FutureSlot(Option<tokio_util::sync::ReusableBoxFuture<'static, Result<(), BoxError>>>);

impl FutureSlot {
    /// Whether it has no box yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Puts `fut` in the slot (dropping what was there), in the box it
    /// has if that fits.
    pub fn set<F>(&mut self, fut: F)
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        match &mut self.0 {
            Some(boxed) => boxed.set(fut),
            None => self.0 = Some(tokio_util::sync::ReusableBoxFuture::new(fut)),
        }
    }

    /// Puts the future of a user's handler in, its output reduced to the
    /// erased result.
    pub(crate) fn set_handler<Fut>(&mut self, fut: Fut)
    where
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.set(async move { fut.await.into_handler_result() });
    }
}

impl Future for FutureSlot {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Some(boxed) => boxed.poll(cx),
            None => Poll::Ready(Err("kconc: a handler call left no future".into())),
        }
    }
}

impl fmt::Debug for FutureSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FutureSlot")
    }
}

/// A type-erased handler of one message: it writes the call's future into
/// the slot it is given.
pub(crate) type HandlerFn = dyn Fn(Message, &Context, &mut FutureSlot) + Send + Sync + 'static;

pub(crate) type BatchFn = dyn Fn(Vec<Message>, &Context) -> BatchFuture + Send + Sync + 'static;

/// A type-erased handler, shared by every task of one subscriber: of one
/// message, or of a batch.
#[derive(Clone)]
pub struct Handler(Kind);

#[derive(Clone)]
enum Kind {
    One(Arc<HandlerFn>),
    Batch(Arc<BatchFn>),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler")
    }
}

impl Handler {
    /// Wraps an async function or closure taking the [`Message`].
    ///
    /// Its output may be `()` or `Result<(), E>` for any `E` convertible into
    /// a boxed error (so `anyhow::Result<()>` works).
    pub fn new<F, Fut, R>(f: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        Self(Kind::One(Arc::new(move |msg, _: &Context, slot: &mut FutureSlot| {
            slot.set_handler(f(msg.detached()));
        })))
    }

    /// Wraps an async function or closure taking the [`Message`] and the
    /// subscriber's [`Context`] (for shutdown signals and follow-up messages).
    pub fn with_context<F, Fut, R>(f: F) -> Self
    where
        F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        Self(Kind::One(Arc::new(move |msg, cx: &Context, slot: &mut FutureSlot| {
            slot.set_handler(f(msg.detached(), cx.clone()));
        })))
    }

    /// Wraps an async function or closure taking one extracted argument
    /// (`Json<T>`, `Text`, `Key<T>`, `Meta`, or a type of yours that
    /// implements [`FromMessage`](crate::FromMessage)), as `#[subscriber]`
    /// does for its arguments: a message the extractor cannot read fails
    /// without calling it (an undecodable message, through the error
    /// policy). The message is only lent to the extractor, so the record is
    /// not copied for it (see [`Message`]'s note).
    ///
    /// ```no_run
    /// use kconc_runtime::{Handler, Json, Subscriber};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// let handler = Handler::from_extractor(|Json(order): Json<Order>| async move {
    ///     let _ = order.id;
    /// });
    /// let sub = Subscriber::from_handler("orders", ["orders"], "billing", handler);
    /// # let _ = sub;
    /// ```
    pub fn from_extractor<T, F, Fut, R>(f: F) -> Self
    where
        T: crate::FromMessage,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        Self(Kind::One(Arc::new(
            move |msg: Message, cx: &Context, slot: &mut FutureSlot| match T::from_message(&msg, cx) {
                Ok(arg) => slot.set_handler(f(arg)),
                Err(error) => crate::__private::extraction_failed(error, slot),
            },
        )))
    }

    /// Wraps an async function or closure taking a batch: messages of one
    /// partition, in offset order, and the subscriber's [`Context`].
    ///
    /// Its output may be `()` or `Result<(), E>` (the whole batch), or a
    /// [`BatchOutcome`](crate::BatchOutcome) (or `Result` of one) whose
    /// indices are those of the `Vec` it was given.
    pub fn batch<F, Fut, R>(f: F) -> Self
    where
        F: Fn(Vec<Message>, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoBatchResult,
    {
        Self(Kind::Batch(Arc::new(move |msgs: Vec<Message>, cx: &Context| {
            let n = msgs.len();
            let fut = f(msgs, cx.clone());
            Box::pin(async move { crate::batch::BatchEnd::of(fut.await.into_batch_result(), n) })
        })))
    }

    /// Wraps a plain function pointer that writes its call's future into
    /// the slot (what `#[subscriber]` generates).
    pub(crate) fn from_fn(f: fn(Message, &Context, &mut FutureSlot)) -> Self {
        Self(Kind::One(Arc::new(f)))
    }

    /// Wraps a plain function pointer that already returns a
    /// [`BatchFuture`] (what `#[subscriber]` generates for a batch handler).
    pub(crate) fn from_batch_fn(f: fn(Vec<Message>, &Context) -> BatchFuture) -> Self {
        Self(Kind::Batch(Arc::new(f)))
    }

    /// The handler with each call in a transaction of `store` (see `sql`).
    pub(crate) fn in_store(self, store: Arc<dyn crate::sql::Store>) -> Self {
        match self.0 {
            Kind::One(f) => Self(Kind::One(store.wrap_one(f))),
            Kind::Batch(f) => Self(Kind::Batch(store.wrap_batch(f))),
        }
    }

    /// Whether it takes batches.
    pub(crate) fn is_batch(&self) -> bool {
        matches!(self.0, Kind::Batch(_))
    }

    /// Calls the handler on one message, its future going into `slot`; a
    /// panic while building it is the call's outcome. (A batch handler is
    /// not called so: the engine starts its messages as batches.)
    pub(crate) fn begin(&self, msg: Message, cx: &Context, slot: &mut FutureSlot) -> Result<(), Outcome> {
        match &self.0 {
            Kind::One(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f(msg, cx, slot)))
                .map_err(|panic| Outcome::Panicked(panic_text(&*panic))),
            Kind::Batch(_) => Err(Outcome::Panicked("a batch handler was given one message".to_owned())),
        }
    }

    /// Calls a batch handler on `msgs` and returns its future; a panic
    /// while building it is the outcome of every message. (A handler of
    /// one message is not called so.)
    pub(crate) fn begin_batch(&self, msgs: Vec<Message>, cx: &Context) -> Result<BatchFuture, Outcome> {
        match &self.0 {
            // (The engine holds no record of a batch handler's: this is
            // only in case.)
            Kind::Batch(f) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                f(msgs.into_iter().map(Message::detached).collect(), cx)
            }))
            .map_err(|panic| Outcome::Panicked(panic_text(&*panic))),
            Kind::One(_) => Err(Outcome::Panicked(
                "a handler of one message was given a batch".to_owned(),
            )),
        }
    }

    /// Polls a handler's future once, turning a panic into the outcome, so
    /// it never escapes to the thread polling it. A future that ended (or
    /// panicked) is not polled again.
    pub(crate) fn poll(fut: &mut FutureSlot, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *fut).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => Poll::Ready(Outcome::Ok),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Outcome::Failed(e)),
            Err(panic) => Poll::Ready(Outcome::Panicked(panic_text(&*panic))),
        }
    }
}

/// How one call of a handler ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok,
    Failed(BoxError),
    Panicked(String),
}

/// What a panic said.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The return types a handler may have: `()` or `Result<(), E>` where `E`
/// converts into a boxed error.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid return type for a kconc handler",
    label = "the handler returns `{Self}` here",
    note = "return `()` or `Result<(), E>` where `E: Into<Box<dyn std::error::Error + Send + Sync>>` (for example `anyhow::Result<()>`)",
    note = "to publish what the handler returns (`Json<T>`, `Bytes`, `Text`, `Reply`), add `reply = \"topic\"` to #[subscriber(..)]"
)]
pub trait IntoHandlerResult {
    /// Reduces the value to success or a boxed error.
    fn into_handler_result(self) -> Result<(), BoxError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E> IntoHandlerResult for Result<(), E>
where
    E: Into<BoxError>,
{
    fn into_handler_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

//! Batch handlers: one call for several messages of one partition, with an
//! outcome per message.
//!
//! A handler that takes a [`Batch<T>`] gets up to `max_batch` messages of
//! one partition (one lane of its ordering mode), each built into a `T` by
//! the single-message extractors; a message that cannot be built fails on
//! its own (under the error policy) and the handler gets the others. It
//! returns `()`, `Result<(), E>` (the whole batch), or a [`BatchOutcome`]
//! naming the messages that failed (by their index in the batch): those go
//! on to retry, dead letter, skip or stop, one by one, and every other
//! message finishes, joining the finished set a commit records, so a crash
//! or a rebalance never hands it to a handler again.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::Context;
use crate::extract::{FromMessageOwned, State};
use crate::handler::BoxError;
use crate::message::{Message, PayloadError, Undecodable};
use crate::reply::{IntoReplies, Reply};

/// What a type-erased batch handler reports, by the index of each message
/// in the messages it was given: those that failed, each with its error,
/// and the replies to publish for each (with `reply = ".."`).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct BatchEnd {
    pub(crate) failed: Vec<(usize, BoxError)>,
    pub(crate) replies: Vec<(usize, Reply)>,
}

/// The future a type-erased batch handler returns.
pub type BatchFuture = Pin<Box<dyn Future<Output = BatchEnd> + Send + 'static>>;

/// Messages of one partition, each built into a `T` (`Batch<Json<Order>>`,
/// `Batch<Text>`, `Batch<Message>`), in offset order. It derefs to `[T]`:
/// `batch.len()`, `batch.iter()`, `&batch[i]`. [`Batch::offset`] gives an
/// item's offset; an index is what [`BatchOutcome::fail`] takes.
///
/// ```
/// use kconc_runtime::{subscriber, Batch, BatchOutcome, Json};
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     id: u64,
/// }
///
/// #[subscriber(topic = "orders", group = "archive", max_batch = 500)]
/// async fn archive(orders: Batch<Json<Order>>) -> BatchOutcome {
///     let mut outcome = BatchOutcome::new();
///     for (i, Json(order)) in orders.iter().enumerate() {
///         if order.id == 0 {
///             outcome.fail(i, "order without an id");
///         }
///     }
///     outcome
/// }
/// ```
pub struct Batch<T> {
    items: Vec<T>,
    offsets: Vec<i64>,
    topic: Arc<str>,
    partition: i32,
}

impl<T> Batch<T> {
    /// The offset of item `index`.
    pub fn offset(&self, index: usize) -> Option<i64> {
        self.offsets.get(index).copied()
    }

    /// The topic its messages come from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition its messages come from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The items, in offset order.
    pub fn into_vec(self) -> Vec<T> {
        self.items
    }
}

impl<T> std::ops::Deref for Batch<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offsets", &self.offsets)
            .field("items", &self.items)
            .finish()
    }
}

/// Which of the messages a batch handler was given each item came from,
/// and those that could not be built (they fail on their own).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct BatchMapping {
    indices: Vec<usize>,
    undecodable: Vec<(usize, PayloadError)>,
}

impl<T: FromMessageOwned> Batch<T> {
    /// Builds each message into a `T`; those that cannot be built are
    /// left out and named in the mapping.
    #[doc(hidden)]
    pub fn build(messages: Vec<Message>, cx: &Context) -> (Self, BatchMapping) {
        let (topic, partition) = messages
            .first()
            .map_or((Arc::from(""), 0), |m| (m.topic_name(), m.partition()));
        let mut batch = Self {
            items: Vec::with_capacity(messages.len()),
            offsets: Vec::with_capacity(messages.len()),
            topic,
            partition,
        };
        let mut mapping = BatchMapping {
            indices: Vec::with_capacity(messages.len()),
            undecodable: Vec::new(),
        };
        for (i, msg) in messages.into_iter().enumerate() {
            let offset = msg.offset();
            match T::from_message_owned(msg, cx) {
                Ok(item) => {
                    batch.items.push(item);
                    batch.offsets.push(offset);
                    mapping.indices.push(i);
                }
                Err(error) => mapping.undecodable.push((i, error)),
            }
        }
        (batch, mapping)
    }
}

/// The messages of a batch that failed, by their index in the [`Batch`]
/// the handler was given; every other message of the batch finished.
///
/// Each failed message goes on alone under the subscriber's error policy:
/// retried (in the next batch of its partition, before anything after
/// it in its lane), then dead-lettered, skipped, or its partition stopped.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    failed: Vec<(usize, BoxError)>,
    replies: Vec<(usize, Reply)>,
}

impl BatchOutcome {
    /// Every message finished.
    pub fn new() -> Self {
        Self::default()
    }

    /// Item `index` of the batch failed with `error`. An index past the
    /// batch's end is ignored (with a warning); a second failure of one
    /// index is ignored.
    pub fn fail(&mut self, index: usize, error: impl Into<BoxError>) -> &mut Self {
        self.failed.push((index, error.into()));
        self
    }

    /// With `reply = ".."`: publishes `value` (what a handler of one
    /// message with `reply` may return: `Json<T>`, `Text`, `Bytes`,
    /// `Reply`, or an `Option` or `Vec` of them) as the reply to item
    /// `index`, keyed like it and carrying its trace headers. Item `index`
    /// finishes only once the broker has acknowledged its replies; a reply
    /// that cannot be built or produced fails that item alone. The replies
    /// of an item that failed are not published.
    pub fn reply(&mut self, index: usize, value: impl IntoReplies) -> &mut Self {
        let mut replies = Vec::new();
        match value.into_replies(&mut replies) {
            Ok(()) => self.replies.extend(replies.into_iter().map(|r| (index, r))),
            Err(error) => self.failed.push((index, error)),
        }
        self
    }

    /// The indices that failed so far.
    pub fn failed(&self) -> impl Iterator<Item = usize> + '_ {
        self.failed.iter().map(|(i, _)| *i)
    }

    /// Whether every message finished.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// The outcome told by the messages the handler was given: item `i`
    /// is message `at(i)`; an item past the batch's end is left out, with
    /// a warning.
    pub(crate) fn into_end(self, len: usize, at: impl Fn(usize) -> Option<usize>) -> BatchEnd {
        let place = |i: usize| {
            let found = at(i);
            if found.is_none() {
                tracing::warn!(
                    index = i,
                    len,
                    "a batch handler failed or replied to an index past its batch's end; ignored"
                );
            }
            found
        };
        BatchEnd {
            failed: self
                .failed
                .into_iter()
                .filter_map(|(i, e)| Some((place(i)?, e)))
                .collect(),
            replies: self
                .replies
                .into_iter()
                .filter_map(|(i, r)| Some((place(i)?, r)))
                .collect(),
        }
    }
}

/// The return types a batch handler may have: `()` or `Result<(), E>` (the
/// whole batch), [`BatchOutcome`] or `Result<BatchOutcome, E>` (per message).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid return type for a kconc batch handler",
    label = "the batch handler returns `{Self}` here",
    note = "return `()` or `Result<(), E>` (the whole batch), or `BatchOutcome` or `Result<BatchOutcome, E>` (which messages failed), \
            where `E: Into<Box<dyn std::error::Error + Send + Sync>>`"
)]
pub trait IntoBatchResult {
    /// Reduces the value to the messages that failed, or an error of the
    /// whole batch.
    fn into_batch_result(self) -> Result<BatchOutcome, BoxError>;
}

impl IntoBatchResult for () {
    fn into_batch_result(self) -> Result<BatchOutcome, BoxError> {
        Ok(BatchOutcome::new())
    }
}

impl IntoBatchResult for BatchOutcome {
    fn into_batch_result(self) -> Result<BatchOutcome, BoxError> {
        Ok(self)
    }
}

impl<E: Into<BoxError>> IntoBatchResult for Result<(), E> {
    fn into_batch_result(self) -> Result<BatchOutcome, BoxError> {
        self.map(|()| BatchOutcome::new()).map_err(Into::into)
    }
}

impl<E: Into<BoxError>> IntoBatchResult for Result<BatchOutcome, E> {
    fn into_batch_result(self) -> Result<BatchOutcome, BoxError> {
        self.map_err(Into::into)
    }
}

/// The other arguments a batch handler may take: what does not come from
/// one message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` reads one message, so a batch handler cannot take it",
    label = "not an argument of a batch handler",
    note = "a batch handler (one taking `Batch<..>`) takes one `Batch<T>` of message extractors (`Batch<Json<Order>>`, \
            `Batch<Message>`) and, beside it, only what does not come from a message: `State<T>` or `Context`"
)]
pub trait FromBatchContext: Sized {
    /// Builds the value from the subscriber's context.
    fn from_batch_context(cx: &Context) -> Result<Self, BoxError>;
}

impl FromBatchContext for Context {
    fn from_batch_context(cx: &Context) -> Result<Self, BoxError> {
        Ok(cx.clone())
    }
}

impl<T: Clone + Send + Sync + 'static> FromBatchContext for State<T> {
    fn from_batch_context(cx: &Context) -> Result<Self, BoxError> {
        cx.state::<T>().map(State).ok_or_else(|| {
            format!(
                "no state of type `{}`: the app provides none (App::state, main!(state = ..), or TestApp::state)",
                std::any::type_name::<T>()
            )
            .into()
        })
    }
}

/// A batch's error, shared by each of its messages (each fails with it).
#[derive(Debug)]
pub(crate) struct BatchFailed(pub(crate) Arc<dyn StdError + Send + Sync + 'static>);

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for BatchFailed {
    // The batch's error itself, so the policy's checks (`NonRetryable`)
    // and the log's cause chain see it.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Each of `indices` fails with `error`.
pub(crate) fn each_fails(error: BoxError, indices: impl IntoIterator<Item = usize>) -> BatchEnd {
    let shared: Arc<dyn StdError + Send + Sync> = Arc::from(error);
    BatchEnd {
        failed: indices
            .into_iter()
            .map(|i| (i, Box::new(BatchFailed(shared.clone())) as BoxError))
            .collect(),
        replies: Vec::new(),
    }
}

impl BatchEnd {
    /// A batch handler's result over `n` messages it was given as they were.
    pub(crate) fn of(result: Result<BatchOutcome, BoxError>, n: usize) -> Self {
        match result {
            Ok(outcome) => outcome.into_end(n, |i| (i < n).then_some(i)),
            Err(error) => each_fails(error, 0..n),
        }
    }
}

impl BatchMapping {
    /// The first message's error that could not be built, if any.
    pub(crate) fn into_first_undecodable(self) -> Option<PayloadError> {
        self.undecodable.into_iter().next().map(|(_, e)| e)
    }

    /// The handler's result told by the messages it was given: a failed
    /// item is its message; a whole batch's error fails each message the
    /// handler had; the undecodable ones fail with their own error.
    pub(crate) fn end(self, result: Result<BatchOutcome, BoxError>) -> BatchEnd {
        let mut end = match result {
            Ok(outcome) => outcome.into_end(self.indices.len(), |i| self.indices.get(i).copied()),
            Err(error) => each_fails(error, self.indices.iter().copied()),
        };
        end.failed.extend(
            self.undecodable
                .into_iter()
                .map(|(i, e)| (i, Box::new(Undecodable(e)) as BoxError)),
        );
        end
    }
}

/// Boxes a batch handler's future into the erased type.
#[doc(hidden)]
pub fn into_batch_future<Fut>(fut: Fut, mapping: BatchMapping) -> BatchFuture
where
    Fut: Future + Send + 'static,
    Fut::Output: IntoBatchResult,
{
    Box::pin(async move { mapping.end(fut.await.into_batch_result()) })
}

/// The future of a batch whose other arguments could not be built: each
/// message fails with the error.
#[doc(hidden)]
pub fn batch_extraction_failed(error: BoxError, messages: usize) -> BatchFuture {
    Box::pin(std::future::ready(each_fails(error, 0..messages)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Text;

    fn cx() -> Context {
        crate::testing::context("s").build()
    }

    #[test]
    fn an_undecodable_message_fails_alone_and_indices_map_back() {
        let msgs = vec![
            Message::new("t", 3, 10).with_payload("a"),
            Message::new("t", 3, 11).with_payload(vec![0xff]),
            Message::new("t", 3, 12).with_payload("c"),
        ];
        let (batch, mapping) = Batch::<Text>::build(msgs, &cx());
        assert_eq!(batch.len(), 2);
        assert_eq!((batch.offset(1), batch.partition(), batch.topic()), (Some(12), 3, "t"));
        let mut outcome = BatchOutcome::new();
        outcome.fail(1, "no").fail(7, "past the end");
        let failed: Vec<usize> = mapping.end(Ok(outcome)).failed.into_iter().map(|(i, _)| i).collect();
        assert_eq!(failed, [2, 1], "item 1 is message 2; message 1 could not be decoded");
    }

    #[test]
    fn a_whole_batchs_error_fails_each_message_it_had_keeping_its_kind() {
        let msgs = vec![
            Message::new("t", 0, 0).with_payload("a"),
            Message::new("t", 0, 1).with_payload("b"),
        ];
        let (_, mapping) = Batch::<Text>::build(msgs, &cx());
        let error: BoxError = Box::new(crate::policy::NonRetryable::new("bad"));
        let failed = mapping.end(Err(error)).failed;
        assert_eq!(failed.len(), 2);
        for (_, e) in &failed {
            assert!(
                !crate::policy::is_retryable(&**e),
                "a non-retryable batch error stays so for each message"
            );
            assert_eq!(crate::policy::error_chain(&**e), "bad");
        }
    }

    #[test]
    fn a_batch_reads_as_a_slice_and_gives_its_items_up() {
        let msgs = vec![
            Message::new("t", 1, 4).with_payload("a"),
            Message::new("t", 1, 6).with_payload("b"),
        ];
        let (batch, _) = Batch::<Text>::build(msgs, &cx());
        let texts = |b: &Batch<Text>| b.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&batch), ["a", "b"]);
        assert_eq!((&batch).into_iter().count(), 2);
        assert_eq!((batch.offset(0), batch.offset(2)), (Some(4), None));
        assert!(format!("{batch:?}").contains("offsets: [4, 6]"));
        let (again, _) = Batch::<Text>::build(vec![Message::new("t", 1, 4).with_payload("a")], &cx());
        assert_eq!(again.into_iter().map(|t| t.0).collect::<Vec<_>>(), ["a"]);
        assert_eq!(batch.into_vec().len(), 2);
    }

    #[test]
    fn an_outcome_names_what_failed_and_replies_per_item() {
        let mut outcome = BatchOutcome::new();
        assert!(outcome.is_ok());
        outcome
            .fail(2, "no")
            .reply(0, Text("zero".into()))
            .reply(1, Some(Text("one".into())));
        assert!(!outcome.is_ok());
        assert_eq!(outcome.failed().collect::<Vec<_>>(), [2]);
        // A reply that cannot be built fails its item.
        let failing: Result<Text, BoxError> = Err("cannot build".into());
        outcome.reply(3, failing);
        assert_eq!(outcome.failed().collect::<Vec<_>>(), [2, 3]);
        let end = BatchEnd::of(Ok(outcome), 3);
        let failed: Vec<usize> = end.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [2], "3 is past the end of a batch of 3");
        let replied: Vec<usize> = end.replies.iter().map(|(i, _)| *i).collect();
        assert_eq!(replied, [0, 1]);
    }

    #[test]
    fn each_return_type_reads_as_an_outcome() {
        let failed = |r: Result<BatchOutcome, BoxError>| BatchEnd::of(r, 2).failed.len();
        assert_eq!(failed(().into_batch_result()), 0);
        assert_eq!(failed(Ok::<(), BoxError>(()).into_batch_result()), 0);
        assert_eq!(failed(Err::<(), _>("whole").into_batch_result()), 2);
        let mut one = BatchOutcome::new();
        one.fail(1, "one");
        assert_eq!(failed(one.into_batch_result()), 1);
        let mut one = BatchOutcome::new();
        one.fail(0, "one");
        assert_eq!(failed(Ok::<_, BoxError>(one).into_batch_result()), 1);
        assert_eq!(failed(Err::<BatchOutcome, _>("whole").into_batch_result()), 2);
    }

    #[test]
    fn the_test_helper_refuses_an_undecodable_message() {
        let msgs = vec![Message::new("t", 0, 0).with_payload(vec![0xff])];
        let error = crate::testing::batch::<Text>(msgs, &cx()).unwrap_err();
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }
}

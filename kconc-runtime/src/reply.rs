//! Replies: what a handler declared with `reply = ".."` returns, published
//! to that topic before its message counts as finished.
//!
//! The handler's future ends only once the broker has acknowledged every
//! reply, so the input's offset is committed only after its replies are
//! stored (at-least-once consume-transform-produce). A reply that cannot be
//! produced fails the message, which then goes through the error policy
//! like a handler error; a retry runs the handler again, so a reply may be
//! published twice (never lost).

use crate::telemetry::Telemetry;
use std::time::Duration;

use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Serialize;

use crate::context::Context;
use crate::extract::{Bytes, Json, Text};
use crate::handler::{BoxError, FutureSlot};
use crate::message::Message;

/// One record to publish: its payload, and optionally its own key and
/// headers. Without a key of its own, a reply is keyed like its input (so
/// it lands in the same key's order downstream).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Reply {
    /// A reply with this payload.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Reply {
            payload: Some(payload.into()),
            ..Reply::default()
        }
    }

    /// A reply whose payload is `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Reply::new(serde_json::to_vec(value)?))
    }

    /// Keys it with `key` instead of the input's key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

/// What a handler with `reply = ".."` may return: a [`Json<T>`], [`Bytes`],
/// [`Text`], a [`Reply`], `()` or `None` (nothing to send), a `Vec` of them
/// (several, in order), or a `Result` of any of these (an error fails the
/// message, as from any handler).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published as a reply",
    label = "not a reply",
    note = "a handler with `reply = \"..\"` returns `Json<T>`, `Bytes`, `Text`, `Reply`, `()`, `Option<..>` or `Vec<..>` \
            of these, or a `Result` of one of them"
)]
pub trait IntoReplies {
    /// The records to publish, or why the message failed.
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError>;
}

impl IntoReplies for Reply {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        out.push(self);
        Ok(())
    }
}

impl IntoReplies for () {
    fn into_replies(self, _: &mut Vec<Reply>) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<T: Serialize> IntoReplies for Json<T> {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        out.push(Reply::json(&self.0)?);
        Ok(())
    }
}

impl IntoReplies for Bytes {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        out.push(Reply::new(self.0));
        Ok(())
    }
}

impl IntoReplies for Text {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        out.push(Reply::new(self.0));
        Ok(())
    }
}

impl<R: IntoReplies> IntoReplies for Option<R> {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        match self {
            Some(r) => r.into_replies(out),
            None => Ok(()),
        }
    }
}

impl<R: IntoReplies> IntoReplies for Vec<R> {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        self.into_iter().try_for_each(|r| r.into_replies(out))
    }
}

impl<R: IntoReplies, E: Into<BoxError>> IntoReplies for Result<R, E> {
    fn into_replies(self, out: &mut Vec<Reply>) -> Result<(), BoxError> {
        self.map_err(Into::into)?.into_replies(out)
    }
}

/// Where a reply comes from: the input message, kept before the handler
/// takes it (a clone shares the record). Not public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct ReplyOrigin(Message);

/// The input's headers a reply carries over.
const CARRIED: &[&str] = &["traceparent", "tracestate", "correlation-id"];

impl ReplyOrigin {
    pub fn of(msg: &Message) -> Self {
        ReplyOrigin(msg.clone())
    }
}

/// The future of a handler with `reply = ".."`: runs it, then publishes
/// what it returned to the subscriber's reply topic and waits for every
/// acknowledgement. Not public API: generated code names it.
#[doc(hidden)]
pub fn into_reply_future<Fut>(fut: Fut, cx: &Context, origin: ReplyOrigin, slot: &mut FutureSlot)
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: IntoReplies,
{
    let cx = cx.clone();
    slot.set(async move {
        let mut replies = Vec::new();
        fut.await.into_replies(&mut replies)?;
        if replies.is_empty() {
            return Ok(());
        }
        let Some(topic) = cx.reply_topic() else {
            return Err("the handler returns replies but its subscriber has no reply topic".into());
        };
        publish(&cx, topic, &origin, replies).await
    })
}

thread_local! {
    /// Set by a poll of a handler's future that ended waiting for its
    /// replies' acknowledgements (see [`take_awaiting_ack`]).
    static AWAITING_ACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the handler future polled last on this thread (since the last
/// call) ended its poll waiting for its replies' acknowledgements; clears
/// it. A `handler_timeout` that ends such a handler says so: the time went
/// to the broker, not to the handler.
pub(crate) fn take_awaiting_ack() -> bool {
    AWAITING_ACK.with(|a| a.replace(false))
}

/// Produces every reply, then waits for all acknowledgements.
async fn publish(cx: &Context, topic: &str, origin: &ReplyOrigin, replies: Vec<Reply>) -> Result<(), BoxError> {
    let span = Telemetry::send_span(topic, replies.len());
    let published = publish_traced(cx, topic, origin, &replies, &span).await;
    Telemetry::sent(&span, topic, replies.len(), published.is_err());
    published
}

async fn publish_traced(
    cx: &Context,
    topic: &str,
    origin: &ReplyOrigin,
    replies: &[Reply],
    span: &tracing::Span,
) -> Result<(), BoxError> {
    let producer = cx.producer()?;
    let trace = Telemetry::trace_headers(span);
    let mut pending = Vec::with_capacity(replies.len());
    for reply in replies {
        pending.push(queue(producer, topic, &origin.0, reply, &trace).await?);
    }
    let acks = async {
        for delivery in pending {
            acknowledged(topic, delivery).await?;
        }
        Ok(())
    };
    let mut acks = std::pin::pin!(acks);
    std::future::poll_fn(|cx| {
        let polled = std::future::Future::poll(acks.as_mut(), cx);
        if polled.is_pending() {
            AWAITING_ACK.with(|a| a.set(true));
        }
        polled
    })
    .await
}

/// A batch's replies: each `(index, reply)` is the reply to `inputs[index]`.
/// Every reply is produced, then every acknowledgement awaited; returns the
/// inputs whose replies failed, each with the error (the others' replies
/// are all stored).
pub(crate) async fn publish_batch(
    cx: &Context,
    inputs: &[Message],
    replies: Vec<(usize, Reply)>,
) -> Vec<(usize, BoxError)> {
    let mut failed: Vec<(usize, BoxError)> = Vec::new();
    let Some(topic) = cx.reply_topic() else {
        failed.extend(replies.into_iter().map(|(i, _)| {
            (
                i,
                "the handler returns replies but its subscriber has no reply topic".into(),
            )
        }));
        return failed;
    };
    let producer = match cx.producer() {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            failed.extend(replies.into_iter().map(|(i, _)| (i, BoxError::from(text.clone()))));
            return failed;
        }
    };
    let span = Telemetry::send_span(topic, replies.len());
    let trace = Telemetry::trace_headers(&span);
    let mut pending = Vec::with_capacity(replies.len());
    for (i, reply) in &replies {
        let Some(input) = inputs.get(*i) else { continue };
        match queue(producer, topic, input, reply, &trace).await {
            Ok(delivery) => pending.push((*i, delivery)),
            Err(e) => failed.push((*i, e)),
        }
    }
    for (i, delivery) in pending {
        if let Err(e) = acknowledged(topic, delivery).await {
            failed.push((i, e));
        }
    }
    let stored = replies.len().saturating_sub(failed.len());
    Telemetry::sent(&span, topic, stored, false);
    if !failed.is_empty() {
        Telemetry::sent(&span, topic, failed.len(), true);
    }
    failed
}

/// Queues one reply to `input` (waiting while librdkafka's queue is full).
async fn queue(
    producer: &rdkafka::producer::FutureProducer<crate::context::ProducerHooks>,
    topic: &str,
    input: &Message,
    reply: &Reply,
    trace: &[(&'static str, String)],
) -> Result<rdkafka::producer::DeliveryFuture, BoxError> {
    let partition = input.partition().to_string();
    let offset = input.offset().to_string();
    // The input's trace headers, or (with OpenTelemetry) those of the
    // reply's own span, which continue the input's trace.
    let mut carried: Vec<(&str, &[u8])> = input
        .headers()
        .iter()
        .filter(|h| CARRIED.contains(&h.key.as_str()))
        .filter(|h| trace.is_empty() || !h.key.starts_with("trace"))
        .filter_map(|h| Some((h.key.as_str(), h.value.as_deref()?)))
        .collect();
    carried.extend(trace.iter().map(|(k, v)| (*k, v.as_bytes())));
    let mut headers = OwnedHeaders::new_with_capacity(reply.headers.len() + carried.len() + 3);
    let own = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
    let source = [
        ("kconc-source-topic", input.topic().as_bytes()),
        ("kconc-source-partition", partition.as_bytes()),
        ("kconc-source-offset", offset.as_bytes()),
    ];
    for (key, value) in carried.iter().copied().chain(own).chain(source) {
        headers = headers.insert(KafkaHeader {
            key,
            value: Some(value),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(k) = reply.key.as_deref().or(input.key()) {
        record = record.key(k);
    }
    if let Some(p) = reply.payload.as_deref() {
        record = record.payload(p);
    }
    // Queued at once (waiting while librdkafka's queue is full); the
    // caller awaits the acknowledgements together.
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((e, r)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                record = r;
            }
            Err((e, _)) => return Err(format!("reply to `{topic}`: {e}").into()),
        }
    }
}

/// Waits for one reply's acknowledgement.
async fn acknowledged(topic: &str, delivery: rdkafka::producer::DeliveryFuture) -> Result<(), BoxError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("reply to `{topic}` not acknowledged: {e}").into()),
        Err(_) => Err(format!("reply to `{topic}`: the producer went away").into()),
    }
}

impl Context {
    /// Sends `value` as JSON to `topic`, keyed by `key`, and waits until the
    /// broker acknowledges it; returns its partition and offset. For
    /// follow-up messages of any handler (a handler with `reply = ".."`
    /// may simply return them instead).
    pub async fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &T,
    ) -> Result<(i32, i64), BoxError> {
        let payload = serde_json::to_vec(value)?;
        let producer = self.producer()?;
        let span = Telemetry::send_span(topic, 1);
        let trace = Telemetry::trace_headers(&span);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload.as_slice());
        if !trace.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(trace.len());
            for (key, value) in &trace {
                headers = headers.insert(KafkaHeader {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            record = record.headers(headers);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        let sent = producer
            .send(record, rdkafka::util::Timeout::Never)
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| format!("send to `{topic}`: {e}").into());
        Telemetry::sent(&span, topic, 1, sent.is_err());
        sent
    }
}

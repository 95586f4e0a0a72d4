//! The spans and metrics of kconc's operations: a handler call (process),
//! a reply or send, an offset commit (settle). Without the `otel` feature
//! these are kconc's own `tracing` spans, for log lines; with it they
//! carry the OpenTelemetry messaging conventions' names, kinds and
//! attributes, and the metrics go to OpenTelemetry (see [`crate::otel`]).
//! The engine calls the same functions either way.

use std::sync::Arc;
use std::time::Duration;

use crate::handler::Outcome;
use crate::message::Message;

/// How a call failed, as `error.type`: a short, fixed name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The handler returned an error.
    Handler,
    /// The message could not be decoded; the handler did not run.
    Undecodable,
    /// It ran over `handler_timeout`.
    Timeout,
    /// It panicked.
    Panic,
}

impl Failure {
    pub(crate) fn of(outcome: &Outcome) -> Option<Failure> {
        match outcome {
            Outcome::Ok => None,
            Outcome::Panicked(_) => Some(Failure::Panic),
            Outcome::Failed(e) if e.is::<crate::message::Undecodable>() => Some(Failure::Undecodable),
            Outcome::Failed(e) if e.is::<crate::engine::HandlerTimedOut>() => Some(Failure::Timeout),
            Outcome::Failed(_) => Some(Failure::Handler),
        }
    }

    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Failure::Handler => "handler_error",
            Failure::Undecodable => "undecodable",
            Failure::Timeout => "timeout",
            Failure::Panic => "panic",
        }
    }
}

/// A subscriber's telemetry: what its spans and metrics name it by.
#[derive(Clone, Debug)]
pub(crate) struct Telemetry {
    subscriber: Arc<str>,
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    group: Arc<str>,
}

impl Telemetry {
    pub(crate) fn new(subscriber: Arc<str>, group: Arc<str>) -> Self {
        Telemetry { subscriber, group }
    }

    /// The span of one call of a handler on `msg`.
    pub(crate) fn process_span(&self, msg: &Message, topic: &Arc<str>) -> tracing::Span {
        let span = self.new_process_span(msg, topic);
        if span.is_disabled() {
            // Nothing listens at this level. A disabled span still tells
            // the `log` crate of every enter, exit and close (tracing's
            // `log` feature, which sqlx turns on), a call each time the
            // handler is polled; the empty span does nothing. Forgetting
            // the disabled one leaks nothing (it holds no subscriber).
            std::mem::forget(span);
            return tracing::Span::none();
        }
        self.record_message(&span, msg);
        span
    }

    #[cfg(not(feature = "otel"))]
    fn new_process_span(&self, msg: &Message, topic: &Arc<str>) -> tracing::Span {
        tracing::debug_span!(
            "message",
            subscriber = &*self.subscriber,
            topic = &**topic,
            partition = msg.partition(),
            offset = msg.offset(),
            key = tracing::field::Empty,
            attempt = msg.attempt(),
            traceparent = tracing::field::Empty,
        )
    }

    #[cfg(not(feature = "otel"))]
    fn record_message(&self, span: &tracing::Span, msg: &Message) {
        if let Some(key) = msg.key() {
            span.record("key", String::from_utf8_lossy(key).as_ref());
        }
        if let Some(tp) = msg.header("traceparent").and_then(|h| h.value.as_deref()) {
            span.record("traceparent", String::from_utf8_lossy(tp).as_ref());
        }
    }

    /// The span of one call of a batch handler on `batch` (not empty).
    pub(crate) fn batch_span(&self, batch: &[(impl Sized, Message)]) -> tracing::Span {
        let Some((_, first)) = batch.first() else {
            return tracing::Span::none();
        };
        let last_offset = batch.last().map_or(first.offset(), |(_, m)| m.offset());
        let span = self.new_batch_span(first, last_offset, batch.len());
        #[cfg(feature = "otel")]
        if !span.is_disabled() {
            for (_, msg) in batch {
                otel_on::relate(&span, msg, crate::config::TraceRelation::Link);
            }
        }
        span
    }

    #[cfg(not(feature = "otel"))]
    fn new_batch_span(&self, first: &Message, last_offset: i64, n: usize) -> tracing::Span {
        tracing::debug_span!(
            "batch",
            subscriber = &*self.subscriber,
            topic = first.topic(),
            partition = first.partition(),
            first_offset = first.offset(),
            last_offset,
            messages = n,
        )
    }

    /// A call of a handler ended (see [`CallEnd`]).
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn call_ended(&self, span: &tracing::Span, call: CallEnd<'_>) {
        #[cfg(feature = "otel")]
        otel_on::call_ended(self, span, call);
    }

    /// The span of a reply or send of `messages` messages to `topic`,
    /// entered or not: its context is what they carry on.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn send_span(topic: &str, messages: usize) -> tracing::Span {
        #[cfg(feature = "otel")]
        return otel_on::send_span(topic, messages);
        #[cfg(not(feature = "otel"))]
        tracing::Span::none()
    }

    /// The `traceparent` and `tracestate` that messages sent under `span`
    /// carry, if it takes part in a trace (with the `otel` feature).
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn trace_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
        #[cfg(feature = "otel")]
        return otel_on::trace_headers(span);
        #[cfg(not(feature = "otel"))]
        Vec::new()
    }

    /// `messages` messages to `topic` were sent (acknowledged, or failed).
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn sent(span: &tracing::Span, topic: &str, messages: usize, failed: bool) {
        #[cfg(feature = "otel")]
        otel_on::sent(span, topic, messages, failed);
    }

    /// The span of one offset commit of `group`'s `partitions` positions
    /// in `topics` (its name is the topic's when there is one).
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn commit_span(group: &str, topic: Option<&str>, partitions: usize) -> tracing::Span {
        #[cfg(feature = "otel")]
        return otel_on::commit_span(group, topic, partitions);
        #[cfg(not(feature = "otel"))]
        tracing::Span::none()
    }

    /// A commit ended after `took`: `error`, the broker's error code, if
    /// it failed.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn commit_ended(
        span: &tracing::Span,
        group: &str,
        topic: Option<&str>,
        took: Duration,
        error: Option<String>,
    ) {
        #[cfg(feature = "otel")]
        otel_on::commit_ended(span, group, topic, took, error);
    }
}

/// How a handler call ended, for [`Telemetry::call_ended`]: on messages
/// of `topic`'s `partition`, after `took`, failed or not.
#[derive(Debug)]
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) struct CallEnd<'a> {
    pub(crate) topic: &'a Arc<str>,
    pub(crate) partition: i32,
    /// How many of its messages were consumed for it: those at their
    /// first attempt (a retry handles a message again without consuming
    /// it again).
    pub(crate) consumed: usize,
    pub(crate) failure: Option<Failure>,
    pub(crate) took: Duration,
}

#[cfg(feature = "otel")]
mod otel_on {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry::KeyValue;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::{CallEnd, Telemetry};
    use crate::message::Message;

    use crate::config::TraceRelation as Relation;

    static RELATION: AtomicU8 = AtomicU8::new(0);

    pub(crate) fn set_relation(relation: Relation) {
        RELATION.store(u8::from(relation == Relation::Parent), Ordering::Relaxed);
    }

    fn relation() -> Relation {
        match RELATION.load(Ordering::Relaxed) {
            0 => Relation::Link,
            _ => Relation::Parent,
        }
    }

    impl Telemetry {
        pub(super) fn new_process_span(&self, msg: &Message, topic: &Arc<str>) -> tracing::Span {
            tracing::debug_span!(
                "message",
                otel.name = tracing::field::Empty,
                otel.kind = "consumer",
                otel.status_code = tracing::field::Empty,
                messaging.system = "kafka",
                messaging.operation.name = "process",
                messaging.operation.type = "process",
                messaging.destination.name = &**topic,
                messaging.destination.partition.id = tracing::field::Empty,
                messaging.consumer.group.name = &*self.group,
                messaging.kafka.offset = msg.offset(),
                messaging.kafka.message.key = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
                kconc.subscriber = &*self.subscriber,
                kconc.attempt = msg.attempt(),
            )
        }

        pub(super) fn record_message(&self, span: &tracing::Span, msg: &Message) {
            span.record("otel.name", format!("process {}", msg.topic()));
            span.record("messaging.destination.partition.id", msg.partition().to_string());
            // The key where it is text (the conventions' condition).
            if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                span.record("messaging.kafka.message.key", key);
            }
            relate(span, msg, relation());
        }

        pub(super) fn new_batch_span(&self, first: &Message, last_offset: i64, n: usize) -> tracing::Span {
            let span = tracing::debug_span!(
                "batch",
                otel.name = format!("process {}", first.topic()),
                otel.kind = "consumer",
                otel.status_code = tracing::field::Empty,
                messaging.system = "kafka",
                messaging.operation.name = "process",
                messaging.operation.type = "process",
                messaging.destination.name = first.topic(),
                messaging.destination.partition.id = first.partition().to_string(),
                messaging.consumer.group.name = &*self.group,
                messaging.batch.message_count = n as i64,
                "error.type" = tracing::field::Empty,
                kconc.subscriber = &*self.subscriber,
                kconc.first_offset = first.offset(),
                kconc.last_offset = last_offset,
            );
            span
        }
    }

    /// Relates `span` to the context `msg`'s producer sent in its
    /// headers, if any: a link, or its parent (which only a single
    /// message's span may have).
    pub(super) fn relate(span: &tracing::Span, msg: &Message, relation: Relation) {
        let cx = TraceContextPropagator::new().extract(&Headers(msg));
        let producer = cx.span().span_context().clone();
        if !producer.is_valid() {
            return;
        }
        match relation {
            Relation::Link => span.add_link(producer),
            Relation::Parent => {
                let _ = span.set_parent(cx);
            }
        }
    }

    struct Headers<'a>(&'a Message);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .header(key)
                .and_then(|h| h.value.as_deref())
                .and_then(|v| std::str::from_utf8(v).ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.headers().iter().map(|h| h.key.as_str()).collect()
        }
    }

    fn attributes(
        operation: (&'static str, &'static str),
        topic: Option<&str>,
        group: Option<&Arc<str>>,
    ) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(7);
        attrs.push(KeyValue::new("messaging.system", "kafka"));
        attrs.push(KeyValue::new("messaging.operation.name", operation.0));
        attrs.push(KeyValue::new("messaging.operation.type", operation.1));
        if let Some(t) = topic {
            attrs.push(KeyValue::new("messaging.destination.name", t.to_owned()));
        }
        if let Some(g) = group {
            attrs.push(KeyValue::new("messaging.consumer.group.name", g.clone()));
        }
        attrs
    }

    pub(super) fn call_ended(telemetry: &Telemetry, span: &tracing::Span, call: CallEnd<'_>) {
        if let Some(f) = call.failure {
            span.record("error.type", f.as_str());
            span.record("otel.status_code", "error");
        }
        let Some(instruments) = crate::otel::instruments() else {
            return;
        };
        let mut attrs = attributes(("process", "process"), None, Some(&telemetry.group));
        attrs.push(KeyValue::new("messaging.destination.name", call.topic.clone()));
        attrs.push(KeyValue::new(
            "messaging.destination.partition.id",
            call.partition.to_string(),
        ));
        if let Some(f) = call.failure {
            attrs.push(KeyValue::new("error.type", f.as_str()));
        }
        instruments.process_duration.record(call.took.as_secs_f64(), &attrs);
        if call.consumed > 0 {
            attrs.retain(|kv| kv.key.as_str() != "error.type");
            instruments.consumed.add(call.consumed as u64, &attrs);
        }
    }

    pub(super) fn send_span(topic: &str, messages: usize) -> tracing::Span {
        tracing::debug_span!(
            "send",
            otel.name = format!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.name = "send",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.batch.message_count = (messages > 1).then_some(messages as i64),
            "error.type" = tracing::field::Empty,
        )
    }

    struct Carrier(Vec<(&'static str, String)>);

    impl Injector for Carrier {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => self.0.push(("traceparent", value)),
                "tracestate" if !value.is_empty() => self.0.push(("tracestate", value)),
                _ => {}
            }
        }
    }

    pub(super) fn trace_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
        if span.is_disabled() {
            return Vec::new();
        }
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return Vec::new();
        }
        let mut carrier = Carrier(Vec::with_capacity(2));
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.0
    }

    pub(super) fn sent(span: &tracing::Span, topic: &str, messages: usize, failed: bool) {
        if failed {
            span.record("error.type", "send_failed");
            span.record("otel.status_code", "error");
        }
        let Some(instruments) = crate::otel::instruments() else {
            return;
        };
        let mut attrs = attributes(("send", "send"), Some(topic), None);
        if failed {
            attrs.push(KeyValue::new("error.type", "send_failed"));
        }
        instruments.sent.add(messages as u64, &attrs);
    }

    pub(super) fn commit_span(group: &str, topic: Option<&str>, partitions: usize) -> tracing::Span {
        tracing::debug_span!(
            "commit",
            otel.name = match topic {
                Some(t) => format!("commit {t}"),
                None => "commit".to_owned(),
            },
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.name = "commit",
            messaging.operation.type = "settle",
            messaging.destination.name = topic,
            messaging.consumer.group.name = group,
            "error.type" = tracing::field::Empty,
            kconc.partitions = partitions as i64,
        )
    }

    pub(super) fn commit_ended(
        span: &tracing::Span,
        group: &str,
        topic: Option<&str>,
        took: Duration,
        error: Option<String>,
    ) {
        if let Some(e) = &error {
            span.record("error.type", e.as_str());
            span.record("otel.status_code", "error");
        }
        let Some(instruments) = crate::otel::instruments() else {
            return;
        };
        let mut attrs = attributes(("commit", "settle"), topic, None);
        attrs.push(KeyValue::new("messaging.consumer.group.name", group.to_owned()));
        if let Some(e) = error {
            attrs.push(KeyValue::new("error.type", e));
        }
        instruments.operation_duration.record(took.as_secs_f64(), &attrs);
    }
}

#[cfg(feature = "otel")]
pub(crate) use otel_on::set_relation;

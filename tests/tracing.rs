//! Each handler call runs inside a `message` tracing span carrying the
//! subscriber, topic, partition, offset, key, attempt and, when the message
//! has one, the W3C `traceparent` header. (Its own test binary: it installs
//! a global tracing subscriber.)

// With the `otel` feature the span carries OpenTelemetry's names instead
// (tests/otel.rs).
#![cfg(not(feature = "otel"))]
// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kconc_runtime::rdkafka::message::{Header, OwnedHeaders};
use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use kconc_runtime::{Message, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

/// Records the fields of every `message` span, and the span each handler's
/// event was emitted in.
#[derive(Clone, Default)]
struct Spans {
    by_id: Arc<Mutex<BTreeMap<u64, Fields>>>,
    handler_events_in: Arc<Mutex<Vec<Fields>>>,
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "message" {
            let mut fields = Fields::new();
            attrs.record(&mut CollectFields(&mut fields));
            self.by_id.lock().unwrap().insert(id.into_u64(), fields);
        }
    }
    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.by_id.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut CollectFields(fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "tracing" {
            return;
        }
        if let Some(span) = ctx.event_span(event) {
            if let Some(fields) = self.by_id.lock().unwrap().get(&span.id().into_u64()) {
                self.handler_events_in.lock().unwrap().push(fields.clone());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_call_runs_in_a_message_span_with_the_traceparent() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(spans.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (topic, group) = ("traced", "g-traced");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let producer: BaseProducer = cluster.client_config().create().unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..3 {
        let payload = i.to_string();
        let mut record = BaseRecord::to(topic).key("order-7").payload(&payload).partition(0);
        if i == 1 {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(traceparent),
            }));
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("traced", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            // An event of the handler's own, inside the span.
            tracing::event!(target: "tracing", tracing::Level::INFO, offset = m.offset(), "handling");
        }
    });
    let app = test_app(&bootstrap).subscriber(sub).start().unwrap();
    wait_for("3 handled", Duration::from_secs(30), || rec.finished() == 3).await;
    app.shutdown().await;

    let events = spans.handler_events_in.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        3,
        "every handler event is inside a message span: {events:?}"
    );
    for (i, fields) in events.iter().enumerate() {
        assert_eq!(fields["subscriber"], "traced");
        assert_eq!(fields["topic"], topic);
        assert_eq!(fields["partition"], "0");
        assert_eq!(fields["key"], "order-7");
        assert_eq!(fields["attempt"], "1");
        let offset: usize = fields["offset"].parse().unwrap();
        assert!(offset < 3, "{i}: {fields:?}");
        assert_eq!(
            fields.get("traceparent").map(String::as_str),
            (offset == 1).then_some(traceparent)
        );
    }
}

//! OpenTelemetry (the `otel` feature): the spans and metrics of handler
//! calls, replies, sends and commits, to the semantic conventions for
//! messaging (v1.44), read from the SDK's in-memory exporters; and
//! `main!()` exporting over OTLP as the environment says, to a receiver in
//! this test. (Its own test binary: it installs the global subscriber and
//! providers.)

#![cfg(feature = "otel")]
// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::{in_test_mode, DEADLINE};
use kconc_runtime::otel::opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceId};
use kconc_runtime::otel::opentelemetry::{KeyValue, Value};
use kconc_runtime::otel::opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use kconc_runtime::otel::opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use kconc_runtime::otel::opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use kconc_runtime::testing::{TestApp, TestMessage};
use kconc_runtime::{subscriber, Batch, BoxError, Context, Json, Message, TraceRelation};

/// The exporters every test of this binary reads, installed once.
struct Installed {
    spans: InMemorySpanExporter,
    tracer: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter: SdkMeterProvider,
    _guard: kconc_runtime::otel::OtelGuard,
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let tracer = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
        let metrics = InMemoryMetricExporter::default();
        let meter = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        let guard = kconc_runtime::otel::init_with(Some(tracer.clone()), Some(meter.clone()), Some("warn")).unwrap();
        Installed {
            spans,
            tracer,
            metrics,
            meter,
            _guard: guard,
        }
    })
}

/// The tests that read or set the span relation run one at a time.
static RELATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn finished_spans() -> Vec<SpanData> {
    let i = installed();
    i.tracer.force_flush().unwrap();
    i.spans.get_finished_spans().unwrap()
}

fn finished_metrics() -> Vec<ResourceMetrics> {
    let i = installed();
    i.meter.force_flush().unwrap();
    i.metrics.get_finished_metrics().unwrap()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attr(attrs, key).map(Value::to_string)
}

/// A producer's span context, as a W3C `traceparent` header gives it.
fn producer_context(n: u8) -> (SpanContext, String) {
    let trace = TraceId::from_bytes([n; 16]);
    let span = SpanId::from_bytes([n + 1; 8]);
    let header = format!("00-{trace}-{span}-01");
    let cx = SpanContext::new(
        trace,
        span,
        kconc_runtime::otel::opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    (cx, header)
}

/// Fails the first attempt at 2; replies with ten times the number.
#[subscriber(
    topic = "otel.orders",
    group = "otel-orders",
    name = "otel-orders",
    reply = "otel.replies",
    retries = 1,
    backoff = "10ms"
)]
async fn orders(msg: Message) -> Result<Json<u64>, BoxError> {
    let n: u64 = serde_json::from_slice(msg.payload().unwrap_or_default())?;
    if n == 2 && msg.attempt() == 1 {
        return Err("the first attempt at 2 fails".into());
    }
    Ok(Json(n * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_send_and_commit_spans_and_metrics_follow_the_messaging_conventions() {
    installed();
    let _one_at_a_time = RELATION.lock().await;
    kconc_runtime::otel::set_trace_relation(TraceRelation::Link);
    let run = TestApp::new()
        .only(["otel-orders"])
        .app(in_test_mode)
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    let (producer, traceparent) = producer_context(7);
    for n in 0..3u64 {
        let mut m = TestMessage::json(&n).key("order-7");
        if n == 1 {
            m = m.header("traceparent", traceparent.clone());
        }
        run.send("otel.orders", m).await.unwrap();
    }
    run.wait_handled("otel-orders", 3).await.unwrap();
    run.wait_idle("otel-orders").await.unwrap();
    let replies = run.read("otel.replies", 3).await.unwrap();
    let group = run.committed("otel-orders").unwrap();
    assert_eq!(group[0].2, Some(3), "committed to the end");
    run.stop().await;

    let spans = finished_spans();
    let process: Vec<&SpanData> = spans.iter().filter(|s| s.name == "process otel.orders").collect();
    assert_eq!(process.len(), 4, "3 messages, one of them twice: {process:#?}");
    let mut offsets = Vec::new();
    for s in &process {
        assert_eq!(s.span_kind, SpanKind::Consumer);
        let a = &s.attributes;
        assert_eq!(attr_str(a, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr_str(a, "messaging.operation.name").as_deref(), Some("process"));
        assert_eq!(attr_str(a, "messaging.operation.type").as_deref(), Some("process"));
        assert_eq!(
            attr_str(a, "messaging.destination.name").as_deref(),
            Some("otel.orders")
        );
        assert_eq!(attr_str(a, "messaging.destination.partition.id").as_deref(), Some("0"));
        assert!(
            attr_str(a, "messaging.consumer.group.name").is_some_and(|g| g.ends_with("otel-orders")),
            "{a:?}"
        );
        assert_eq!(attr_str(a, "messaging.kafka.message.key").as_deref(), Some("order-7"));
        let Some(Value::I64(offset)) = attr(a, "messaging.kafka.offset") else {
            panic!("no offset: {a:?}")
        };
        offsets.push(*offset);
        let failed = attr_str(a, "error.type");
        assert_eq!(failed.is_some(), matches!(s.status, Status::Error { .. }), "{s:#?}");
        if *offset == 2 && failed.is_some() {
            assert_eq!(failed.as_deref(), Some("handler_error"));
        } else {
            assert_eq!(failed, None, "{s:#?}");
        }
        // Link by default: the producer's trace is linked, not joined.
        if *offset == 1 {
            let linked: Vec<&SpanContext> = s.links.iter().map(|l| &l.span_context).collect();
            assert_eq!(linked, [&producer], "linked to the producer's span");
            assert_ne!(s.span_context.trace_id(), producer.trace_id());
        } else {
            assert!(s.links.is_empty(), "{s:#?}");
        }
        assert_eq!(s.parent_span_id, SpanId::INVALID, "a trace of its own");
    }
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 1, 2, 2]);
    assert_eq!(
        process
            .iter()
            .filter(|s| attr_str(&s.attributes, "error.type").is_some())
            .count(),
        1,
        "the failed attempt says so"
    );

    // Each reply is sent in a span of its own, a child of the process
    // span, and carries that span's context on.
    let sends: Vec<&SpanData> = spans.iter().filter(|s| s.name == "send otel.replies").collect();
    assert_eq!(sends.len(), 3, "{sends:#?}");
    for s in &sends {
        assert_eq!(s.span_kind, SpanKind::Producer);
        assert_eq!(
            attr_str(&s.attributes, "messaging.operation.type").as_deref(),
            Some("send")
        );
        let parent = process
            .iter()
            .find(|p| p.span_context.span_id() == s.parent_span_id)
            .expect("a send's parent is a process span");
        assert_eq!(parent.span_context.trace_id(), s.span_context.trace_id());
    }
    for reply in &replies {
        let header = reply.header_str("traceparent").expect("a reply carries the context");
        let send = sends
            .iter()
            .find(|s| header == format!("00-{}-{}-01", s.span_context.trace_id(), s.span_context.span_id()))
            .unwrap_or_else(|| panic!("{header} is not a send span's"));
        assert_ne!(send.span_context.trace_id(), producer.trace_id());
    }

    let commits: Vec<&SpanData> = spans.iter().filter(|s| s.name == "commit otel.orders").collect();
    assert!(!commits.is_empty(), "commits are settle spans");
    for s in &commits {
        assert_eq!(s.span_kind, SpanKind::Client);
        assert_eq!(
            attr_str(&s.attributes, "messaging.operation.name").as_deref(),
            Some("commit")
        );
        assert_eq!(
            attr_str(&s.attributes, "messaging.operation.type").as_deref(),
            Some("settle")
        );
        assert!(attr_str(&s.attributes, "messaging.consumer.group.name").is_some_and(|g| g.ends_with("otel-orders")));
    }

    let metrics = finished_metrics();
    let on = |destination: &str| {
        let d = destination.to_owned();
        move |attrs: &[KeyValue]| attr_str(attrs, "messaging.destination.name").as_deref() == Some(&d)
    };
    let process_duration = histogram(&metrics, "messaging.process.duration", on("otel.orders"));
    assert_eq!(
        process_duration.iter().map(|p| p.count).sum::<u64>(),
        4,
        "{process_duration:?}"
    );
    for p in &process_duration {
        assert_eq!(
            p.bounds,
            [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
            "the conventions' buckets"
        );
        assert_eq!(attr_str(&p.attributes, "messaging.system").as_deref(), Some("kafka"));
        assert_eq!(
            attr_str(&p.attributes, "messaging.operation.name").as_deref(),
            Some("process")
        );
    }
    assert_eq!(
        process_duration
            .iter()
            .filter(|p| attr_str(&p.attributes, "error.type").as_deref() == Some("handler_error"))
            .map(|p| p.count)
            .sum::<u64>(),
        1
    );
    assert_eq!(
        sum(&metrics, "messaging.client.consumed.messages", on("otel.orders")),
        3
    );
    assert_eq!(sum(&metrics, "messaging.client.sent.messages", on("otel.replies")), 3);
    let commit_durations = histogram(&metrics, "messaging.client.operation.duration", on("otel.orders"));
    assert!(
        commit_durations
            .iter()
            .any(|p| attr_str(&p.attributes, "messaging.operation.name").as_deref() == Some("commit") && p.count > 0),
        "{commit_durations:?}"
    );
}

/// A histogram's data point, as read.
#[derive(Debug)]
struct Point {
    attributes: Vec<KeyValue>,
    bounds: Vec<f64>,
    count: u64,
}

fn histogram(metrics: &[ResourceMetrics], name: &str, on: impl Fn(&[KeyValue]) -> bool) -> Vec<Point> {
    let mut points = Vec::new();
    for m in metrics.iter().flat_map(|r| r.scope_metrics()).flat_map(|s| s.metrics()) {
        if m.name() != name {
            continue;
        }
        assert_eq!(m.unit(), "s", "{name}");
        if let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() {
            for p in h.data_points() {
                let attributes: Vec<KeyValue> = p.attributes().cloned().collect();
                if on(&attributes) {
                    points.push(Point {
                        attributes,
                        bounds: p.bounds().collect(),
                        count: p.count(),
                    });
                }
            }
        }
    }
    // Cumulative: the last export holds everything.
    let mut last: BTreeMap<String, Point> = BTreeMap::new();
    for p in points {
        last.insert(format!("{:?}", p.attributes), p);
    }
    last.into_values().collect()
}

fn sum(metrics: &[ResourceMetrics], name: &str, on: impl Fn(&[KeyValue]) -> bool) -> u64 {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for m in metrics.iter().flat_map(|r| r.scope_metrics()).flat_map(|s| s.metrics()) {
        if m.name() != name {
            continue;
        }
        assert_eq!(m.unit(), "{message}", "{name}");
        if let AggregatedMetrics::U64(MetricData::Sum(s)) = m.data() {
            for p in s.data_points() {
                let attributes: Vec<KeyValue> = p.attributes().cloned().collect();
                if on(&attributes) {
                    last.insert(format!("{attributes:?}"), p.value());
                }
            }
        }
    }
    last.values().sum()
}

#[subscriber(
    topic = "otel.batches",
    group = "otel-batches",
    name = "otel-batches",
    max_batch = 10
)]
async fn batches(items: Batch<Json<u64>>) {
    assert!(!items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_process_span_counts_its_messages_and_links_to_each_producer() {
    installed();
    let run = TestApp::new()
        .only(["otel-batches"])
        .app(in_test_mode)
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    let producers: Vec<(SpanContext, String)> = (10..15).map(producer_context).collect();
    let messages = producers
        .iter()
        .enumerate()
        .map(|(i, (_, tp))| TestMessage::json(&(i as u64)).header("traceparent", tp.clone()));
    run.send_many("otel.batches", messages).await.unwrap();
    run.wait_handled("otel-batches", 5).await.unwrap();
    run.wait_idle("otel-batches").await.unwrap();
    run.stop().await;

    let spans = finished_spans();
    let process: Vec<&SpanData> = spans.iter().filter(|s| s.name == "process otel.batches").collect();
    let mut counted = 0;
    let mut linked = Vec::new();
    for s in &process {
        assert_eq!(s.span_kind, SpanKind::Consumer);
        let Some(Value::I64(n)) = attr(&s.attributes, "messaging.batch.message_count") else {
            panic!("no message count: {s:#?}")
        };
        assert_eq!(s.links.len(), *n as usize, "a link per message");
        assert!(
            attr(&s.attributes, "messaging.kafka.offset").is_none(),
            "not one message's"
        );
        counted += n;
        linked.extend(s.links.iter().map(|l| l.span_context.clone()));
    }
    assert_eq!(counted, 5, "{process:#?}");
    for (producer, _) in &producers {
        assert!(linked.contains(producer), "{producer:?} is not linked");
    }
}

/// Sends on what it gets, with `Context::send_json`.
#[subscriber(topic = "otel.parented", group = "otel-parented", name = "otel-parented")]
async fn forward(cx: Context, Json(n): Json<u64>) -> Result<(), BoxError> {
    cx.send_json("otel.forwarded", None, &n).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_parent_relation_the_process_span_joins_the_producers_trace_and_a_send_continues_it() {
    installed();
    let _one_at_a_time = RELATION.lock().await;
    kconc_runtime::otel::set_trace_relation(TraceRelation::Parent);
    let run = TestApp::new()
        .only(["otel-parented"])
        .topic("otel.forwarded")
        .app(in_test_mode)
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    let (producer, traceparent) = producer_context(20);
    run.send(
        "otel.parented",
        TestMessage::json(&1u64).header("traceparent", traceparent),
    )
    .await
    .unwrap();
    run.wait_handled("otel-parented", 1).await.unwrap();
    let forwarded = run.read("otel.forwarded", 1).await.unwrap();
    run.stop().await;
    kconc_runtime::otel::set_trace_relation(TraceRelation::Link);

    let spans = finished_spans();
    let process: Vec<&SpanData> = spans.iter().filter(|s| s.name == "process otel.parented").collect();
    assert_eq!(process.len(), 1, "{process:#?}");
    let p = process[0];
    assert_eq!(
        p.span_context.trace_id(),
        producer.trace_id(),
        "in the producer's trace"
    );
    assert_eq!(p.parent_span_id, producer.span_id(), "the producer's child");
    assert!(p.links.is_empty());
    let send = spans
        .iter()
        .find(|s| s.name == "send otel.forwarded")
        .expect("send_json's span");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, p.span_context.span_id());
    assert_eq!(
        forwarded[0].header_str("traceparent").map(str::to_owned),
        Some(format!("00-{}-{}-01", producer.trace_id(), send.span_context.span_id())),
        "the sent message continues the trace"
    );
    assert_eq!(
        sum(&finished_metrics(), "messaging.client.sent.messages", |a| {
            attr_str(a, "messaging.destination.name").as_deref() == Some("otel.forwarded")
        }),
        1
    );
}

#[test]
fn main_exports_over_otlp_as_the_environment_says_only_when_it_runs_and_refuses_what_is_not_built_in() {
    let receiver = kconc_runtime::testing::OtlpReceiver::start("127.0.0.1:0", true).unwrap();
    let addr = receiver.addr();
    // With the `otel` feature (and this test's other features).
    let features: &[&str] = if cfg!(feature = "postgres") {
        &["otel", "postgres"]
    } else {
        &["otel"]
    };
    let quickstart = common::example_binary_with("quickstart", features);
    let out = std::process::Command::new(&quickstart)
        .env_remove("RUST_LOG")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_SERVICE_NAME", "quickstart-otel")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let body_of = |path: &str| -> Vec<u8> { receiver.bodies(path).concat() };
    let contains = |body: &[u8], needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    let traces = body_of("/v1/traces");
    for needle in [
        "quickstart-otel",
        "process quickstart",
        "commit quickstart",
        "messaging.destination.name",
        "messaging.consumer.group.name",
        "messaging.kafka.offset",
    ] {
        assert!(contains(&traces, needle), "no `{needle}` in the traces sent: {stderr}");
    }
    let metrics = body_of("/v1/metrics");
    for needle in [
        "quickstart-otel",
        "messaging.process.duration",
        "messaging.client.consumed.messages",
        "messaging.client.operation.duration",
    ] {
        assert!(contains(&metrics, needle), "no `{needle}` in the metrics sent");
    }

    // The run installed the providers (the SDK says so at `info`);
    // printing the subscribers or the document installs nothing.
    assert!(stderr.contains("TracerProvider.GlobalSet"), "{stderr}");
    for args in [&["--list"][..], &["--asyncapi"][..]] {
        let out = std::process::Command::new(&quickstart)
            .args(args)
            .env_remove("RUST_LOG")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("GlobalSet"),
            "{args:?} installed OpenTelemetry: {stderr}"
        );
    }

    let refused = std::process::Command::new(&quickstart)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handlers_own_spans_are_children_of_the_process_span() {
    installed();
    let run = TestApp::new()
        .only(["otel-own"])
        .app(in_test_mode)
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    run.send("otel.own", TestMessage::json(&5u64)).await.unwrap();
    run.wait_handled("otel-own", 1).await.unwrap();
    run.stop().await;
    let spans = finished_spans();
    let process = spans
        .iter()
        .find(|s| s.name == "process otel.own")
        .expect("the process span");
    let own = spans
        .iter()
        .find(|s| s.name == "look up the price")
        .expect("the handler's span");
    assert_eq!(own.parent_span_id, process.span_context.span_id());
    assert_eq!(own.span_context.trace_id(), process.span_context.trace_id());
}

#[subscriber(topic = "otel.own", group = "otel-own", name = "otel-own")]
async fn own(Json(n): Json<u64>) {
    let span = tracing::info_span!("look up the price", n);
    let _in = span.enter();
}

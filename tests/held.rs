//! Records that wait for their handlers as librdkafka's, not copied (first
//! polls on the workers, the default, in every ordering): whatever a handler
//! keeps is a copy, intact after the consumer is closed, and the closing
//! does not wait for it; key, payload and headers (parsed only when read)
//! reach each kind of argument as they were sent.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use kconc_runtime::rdkafka::message::{Header, OwnedHeaders};
use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use kconc_runtime::{subscriber, App, Context, FromMessage, Headers, Message, OrderingMode, PayloadError, Subscriber};

const N: usize = 400;

/// What record `i` carries: its key, its payload, and a header on every
/// other one.
fn expected(i: usize) -> (String, String, Option<String>) {
    (
        format!("k{i}"),
        format!("payload {i}"),
        i.is_multiple_of(2).then(|| format!("h{i}")),
    )
}

/// Produces the `N` records to `topic`, over 2 partitions.
fn produce_all(bootstrap: &str, topic: &str) {
    let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..N {
        let (key, payload, header) = expected(i);
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .partition((i % 2) as i32);
        if let Some(h) = &header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "h",
                value: Some(h.as_bytes()),
            }));
        }
        producer.send(record).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Checks what a handler kept against what was sent, after its consumer
/// is gone: (key, payload, header "h") per record, by its index in the key.
fn check(kept: &[(String, String, Option<String>)]) {
    assert_eq!(kept.len(), N, "every record kept once");
    let mut seen = vec![false; N];
    for (key, payload, header) in kept {
        let i: usize = key.trim_start_matches('k').parse().unwrap();
        assert_eq!((key, payload, header), (&expected(i).0, &expected(i).1, &expected(i).2));
        assert!(!std::mem::replace(&mut seen[i], true), "record {i} kept twice");
    }
}

/// Reads a message's parts (after its consumer is closed, for the kept ones),
/// and checks it is a copy: its `Debug` names where its bytes are, and a
/// handler must never keep librdkafka's record. (Whether a kept record
/// keeps the consumer from closing depends on timing: alone, this file's
/// tests closed and read the records intact with one kept; run together,
/// a close did not return.)
fn parts(m: &Message) -> (String, String, Option<String>) {
    let debug = format!("{m:?}");
    assert!(debug.contains("Copied"), "a handler kept librdkafka's record: {debug}");
    (
        String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
        String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
        m.header_str("h").map(str::to_owned),
    )
}

/// Runs the registered subscriber `name` over `topic` until it finished
/// every record, then shuts it down; the consumer must close (a record
/// still librdkafka's would keep it from closing).
async fn run(name: &str, topic: &str) {
    run_app(name, topic, |_| App::from_registry().only([name])).await;
}

/// [`run`], with the app `app` makes.
async fn run_app(name: &str, topic: &str, app: impl FnOnce(&str) -> App) {
    let cluster = cluster(topic, 2);
    produce_all(cluster.bootstrap_servers(), topic);
    let app = app(topic).brokers(cluster.bootstrap_servers()).start().unwrap();
    wait_for("every record handled", Duration::from_secs(60), || {
        app.stats(name).unwrap().handled >= N as u64
    })
    .await;
    let handle = app.stats_handle(name).unwrap();
    tokio::time::timeout(Duration::from_secs(60), app.shutdown())
        .await
        .expect("the shutdown ends though handlers kept their messages");
    // Its poll thread ends: the consumer's close returned (`shutdown`
    // leaves behind one that does not, after `shutdown_timeout`).
    wait_for("the consumer closed", Duration::from_secs(30), || !handle.is_running()).await;
}

static KEPT: Mutex<Vec<Message>> = Mutex::new(Vec::new());

/// Keeps every message it is given, past its consumer.
#[subscriber(topic = "kept", group = "kept", concurrency = 8)]
async fn keep(m: Message) {
    KEPT.lock().unwrap().push(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_handler_keeps_is_its_own_and_outlives_the_consumer() {
    run("held::keep", "kept").await;
    let kept: Vec<_> = KEPT.lock().unwrap().drain(..).collect();
    check(&kept.iter().map(parts).collect::<Vec<_>>());
}

/// Runs a builder subscriber `name` in `ordering` whose handler keeps every
/// `Message` it is given in `kept`, then checks what it kept.
async fn keep_built(name: &str, ordering: OrderingMode, kept: &'static Mutex<Vec<Message>>) {
    let topic = format!("kept-{name}");
    run_app(name, &topic, |topic| {
        let sub = Subscriber::new(name, [topic], topic, move |m: Message| async move {
            kept.lock().unwrap().push(m);
        })
        .concurrency(8)
        .ordering(ordering);
        App::new().subscriber(sub)
    })
    .await;
    let kept: Vec<_> = kept.lock().unwrap().drain(..).collect();
    check(&kept.iter().map(parts).collect::<Vec<_>>());
}

static KEPT_BUILT: Mutex<Vec<Message>> = Mutex::new(Vec::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_built_handler_keeps_outlives_the_consumer() {
    keep_built("built", OrderingMode::Unordered, &KEPT_BUILT).await;
}

static KEPT_KEYED: Mutex<Vec<Message>> = Mutex::new(Vec::new());

/// In `key` order too: a record whose key is free waits held, as in
/// `unordered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_key_order_a_message_a_handler_keeps_outlives_the_consumer() {
    keep_built("keyed", OrderingMode::Key, &KEPT_KEYED).await;
}

/// An extractor that clones the message it borrows (so keeps it).
struct Cloned(Message);

impl FromMessage for Cloned {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        Ok(Cloned(msg.clone()))
    }
}

static CLONED: Mutex<Vec<Message>> = Mutex::new(Vec::new());
static HEADERS: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

/// Takes a clone through its own extractor, and the headers through
/// kconc's.
#[subscriber(topic = "cloned", group = "cloned", concurrency = 8)]
async fn clone_it(Cloned(m): Cloned, headers: Headers) {
    HEADERS
        .lock()
        .unwrap()
        .push(headers.get("h").map(|v| String::from_utf8_lossy(v).into_owned()));
    CLONED.lock().unwrap().push(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_an_extractor_keeps_is_a_copy_and_headers_arrive_when_read() {
    run("held::clone_it", "cloned").await;
    let kept: Vec<_> = CLONED.lock().unwrap().drain(..).collect();
    let parts: Vec<_> = kept.iter().map(parts).collect();
    check(&parts);
    // The `Headers` argument saw the same header as the clone did.
    let headers = HEADERS.lock().unwrap().clone();
    let mut from_clones: Vec<_> = parts.into_iter().map(|(_, _, h)| h).collect();
    let mut from_extractor = headers;
    from_clones.sort();
    from_extractor.sort();
    assert_eq!(from_clones, from_extractor);
}

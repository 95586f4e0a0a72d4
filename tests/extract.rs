//! Extractors end to end on the embedded cluster: typed payloads reach the
//! handler, undecodable messages fail one by one without stopping the
//! consumer (and are committed past, as the foundation's policy says), and
//! the context's producer publishes follow-up messages.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer as _};
use kconc_runtime::{subscriber, App, Context, Json, Key, Meta};

#[derive(serde::Deserialize, serde::Serialize)]
struct Order {
    id: u64,
    cents: u64,
}

static GOOD: AtomicUsize = AtomicUsize::new(0);
static SUM: AtomicU64 = AtomicU64::new(0);
static META_OK: AtomicUsize = AtomicUsize::new(0);

#[subscriber(topic = "typed", group = "typed", concurrency = 5, commit_interval = "100ms")]
async fn typed(order: Json<Order>, key: Key<String>, meta: Meta) -> anyhow::Result<()> {
    anyhow::ensure!(
        *key == format!("c{}", order.id % 3),
        "key {} does not match order {}",
        *key,
        order.id
    );
    if &*meta.topic == "typed" && &*meta.group == "typed" && meta.attempt == 1 && meta.offset >= 0 {
        META_OK.fetch_add(1, Ordering::SeqCst);
    }
    SUM.fetch_add(order.cents, Ordering::SeqCst);
    GOOD.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_payloads_reach_the_handler_and_bad_ones_fail_alone() {
    let cluster = cluster("typed", 1);
    let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    // 100 good orders, with a bad one after every tenth: invalid JSON, a
    // null payload, a missing key, a key that is not UTF-8.
    let mut expected_sum = 0;
    for i in 0..100_u64 {
        let order = serde_json::to_string(&Order { id: i, cents: i * 10 }).unwrap();
        expected_sum += i * 10;
        let key = format!("c{}", i % 3);
        producer
            .send(BaseRecord::to("typed").key(&key).payload(&order))
            .unwrap();
        if i % 10 == 9 {
            let bad: BaseRecord<'_, [u8], [u8]> = match i / 10 % 4 {
                0 => BaseRecord::to("typed").key(&b"c0"[..]).payload(&b"{oops"[..]),
                1 => BaseRecord::to("typed").key(&b"c0"[..]),
                2 => BaseRecord::to("typed").payload(order.as_bytes()),
                _ => BaseRecord::to("typed").key(&[0xff_u8][..]).payload(order.as_bytes()),
            };
            producer.send(bad).unwrap();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let ends = end_offsets(cluster.bootstrap_servers(), "typed", 1);
    assert_eq!(ends, vec![110]);

    let app = App::from_registry()
        .brokers(cluster.bootstrap_servers())
        .only(["extract::typed"])
        .start()
        .unwrap();
    wait_for("every message finished", Duration::from_secs(60), || {
        let s = app.stats("extract::typed").unwrap();
        s.handled + s.failed >= 110
    })
    .await;
    let stats = app.stats("extract::typed").unwrap();
    let bootstrap = app.bootstrap_servers().to_owned();
    app.shutdown().await;
    assert_eq!(GOOD.load(Ordering::SeqCst), 100);
    assert_eq!(SUM.load(Ordering::SeqCst), expected_sum);
    assert_eq!(META_OK.load(Ordering::SeqCst), 100);
    assert_eq!((stats.handled, stats.failed, stats.panicked), (100, 10, 0), "{stats:?}");
    assert_eq!(committed(&bootstrap, "typed", "typed", 1), vec![Some(110)]);
}

static FORWARDED: AtomicUsize = AtomicUsize::new(0);

#[subscriber(topic = "incoming", group = "forwarder", concurrency = 4)]
async fn forward(order: Json<Order>, cx: Context) -> anyhow::Result<()> {
    let payload = format!("{{\"forwarded\":{}}}", order.id);
    let record = FutureRecord::to("outgoing").key("k").payload(&payload);
    cx.producer()?
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce failed: {e}"))?;
    FORWARDED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_producer_publishes_follow_up_messages() {
    let cluster = cluster("incoming", 2);
    cluster.create_topic("outgoing", 1).unwrap();
    let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    for i in 0..50_u64 {
        let order = serde_json::to_string(&Order { id: i, cents: 1 }).unwrap();
        producer
            .send(BaseRecord::<(), _>::to("incoming").payload(&order))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let app = App::from_registry()
        .brokers(cluster.bootstrap_servers())
        .only(["extract::forward"])
        .start()
        .unwrap();
    wait_for("50 forwarded", Duration::from_secs(60), || {
        FORWARDED.load(Ordering::SeqCst) >= 50
    })
    .await;
    app.shutdown().await;
    assert_eq!(end_offsets(cluster.bootstrap_servers(), "outgoing", 1), vec![50]);
}

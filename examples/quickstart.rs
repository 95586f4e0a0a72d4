//! The kconc quickstart: one handler, 20 at a time, offsets committed safely.
//!
//! Run with:
//!
//! ```text
//! cargo run --example quickstart                             # embedded broker: produces 2,000 messages, consumes them, checks, exits
//! cargo run --example quickstart -- --brokers localhost:9092 # a real cluster: consumes topic `quickstart` until Ctrl-C
//! ```
//!
//! On the embedded broker (librdkafka's in-process mock cluster) a start-up
//! hook produces 2,000 demo messages before consuming starts, the handler
//! sleeps a random 5-50 ms per message, and once all are handled the app
//! shuts down; a shutdown hook, which runs after the final commit, prints
//! how many were processed, how long it took, and whether the committed
//! offsets equal the partition ends (the exit code says so too).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kconc_runtime::testing::{committed_offsets, TestProducer};
use kconc_runtime::{subscriber, Message, Setup};

const TOPIC: &str = "quickstart";
const DEMO_MESSAGES: usize = 2_000;

static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// The handler: pretends to do 5-50 ms of I/O per message.
#[subscriber(topic = "quickstart", group = "quickstart", concurrency = 20)]
async fn handle(msg: Message) -> Result<(), std::io::Error> {
    let work = Duration::from_millis(rand::random_range(5..=50));
    tokio::time::sleep(work).await;
    if msg.offset() % 500 == 0 {
        tracing::info!(partition = msg.partition(), offset = msg.offset(), "handled");
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What the demo produced: each partition's end offset, and when.
#[derive(Clone)]
struct Demo {
    ends: BTreeMap<(String, i32), i64>,
    started: Instant,
}

/// On the embedded broker: produces the demo messages, and shuts the app
/// down once every one is handled. On a real cluster: nothing.
async fn seed(setup: Setup) -> Result<Option<Demo>, kconc_runtime::Error> {
    if !setup.is_embedded() {
        return Ok(None);
    }
    let producer = TestProducer::new(setup.bootstrap_servers())?;
    for i in 0..DEMO_MESSAGES {
        let (key, payload) = (format!("user-{}", i % 100), format!("{{\"order\":{i}}}"));
        producer.send(TOPIC, None, Some(key.as_bytes()), payload.as_bytes())?;
    }
    let ends = producer.flush(Duration::from_secs(30))?;
    let stop = setup.shutdown_handle();
    tokio::spawn(async move {
        while HANDLED.load(Ordering::Relaxed) < DEMO_MESSAGES {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.shutdown();
    });
    Ok(Some(Demo {
        ends,
        started: Instant::now(),
    }))
}

/// After the final commit: the committed offsets against the partition ends.
async fn check(setup: Setup) -> Result<(), String> {
    let Some(Some(demo)) = setup.state::<Option<Demo>>() else {
        return Ok(());
    };
    let took = demo.started.elapsed();
    let handled = HANDLED.load(Ordering::Relaxed);
    println!();
    println!(
        "processed {handled} messages in {:.2} s ({:.0} msg/s) with concurrency 20",
        took.as_secs_f64(),
        handled as f64 / took.as_secs_f64()
    );
    let partitions = demo.ends.keys().map(|(_, p)| p + 1).max().unwrap_or(0);
    let committed =
        committed_offsets(setup.bootstrap_servers(), "quickstart", TOPIC, partitions).map_err(|e| e.to_string())?;
    println!("partition  end  committed");
    let mut all_equal = handled == DEMO_MESSAGES;
    for (p, c) in committed.iter().enumerate() {
        let end = demo.ends.get(&(TOPIC.to_owned(), p as i32)).copied().unwrap_or(0);
        let c_text = c.map_or("none".to_owned(), |c| c.to_string());
        println!("{p:>9}  {end:>4}  {c_text:>9}");
        all_equal &= *c == Some(end) || (end == 0 && c.is_none());
    }
    if all_equal {
        println!("OK: every message processed, committed offsets equal the partition ends");
        Ok(())
    } else {
        Err("committed offsets do not equal the partition ends".into())
    }
}

kconc_runtime::main!(state = seed, on_stop = check, default_brokers = "embedded");

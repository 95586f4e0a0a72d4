//! `--low-rate`: the offset commits kconc sends at a low, steady rate, where
//! partitions go idle between messages: 8 partitions × 10 msg/s, a no-op
//! handler, the default commit settings, for 20 s after a 2 s warm-up (3 s
//! with `--smoke`). Every commit of the committer is one OffsetCommit
//! request (all partitions together), so the subscriber's commit counters
//! give the requests per second; the idle-commit counter says how many of
//! them partitions going idle asked for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use kconc_runtime::rdkafka::client::DefaultClientContext;
use kconc_runtime::rdkafka::ClientConfig;
use kconc_runtime::testing::TestProducer;
use kconc_runtime::{App, Message, Subscriber};

const PARTITIONS: i32 = 8;
/// Messages per second per partition.
const PER_PARTITION: u32 = 10;

/// Creates `topic` with `PARTITIONS` partitions on a real cluster (one that
/// already exists is fine).
pub(crate) async fn create_topic(bootstrap: &str, topic: &str) -> Result<(), String> {
    create_topic_of(bootstrap, topic, PARTITIONS).await
}

/// [`create_topic`] with `partitions` partitions.
pub(crate) async fn create_topic_of(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .map_err(|e| format!("create topic `{topic}`: {e}"))?;
    for r in results {
        if let Err((t, e)) = r {
            if e != kconc_runtime::rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(format!("create topic `{t}`: {e}"));
            }
        }
    }
    Ok(())
}

/// A name part no earlier run used: the process id and the time.
pub(crate) fn stamp() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    )
}

pub(crate) async fn run(bootstrap: &str, embedded: bool, seconds: u64) -> Result<(), String> {
    let stamp = stamp();
    let topic = format!("bench-low-rate-{stamp}");
    if embedded {
        // The embedded cluster of this run: its caller made `bench-low-rate`.
        return measure(bootstrap, "bench-low-rate", &stamp, seconds).await;
    }
    create_topic(bootstrap, &topic).await?;
    measure(bootstrap, &topic, &stamp, seconds).await
}

async fn measure(bootstrap: &str, topic: &str, stamp: &str, seconds: u64) -> Result<(), String> {
    let group = format!("bench-low-rate-{stamp}");
    let sub = Subscriber::new("low-rate", [topic], group.as_str(), |_m: Message| async {});
    // `KCONC_BENCH_PROPS="fetch.wait.max.ms=5"`: a fetch answered as soon
    // as a record arrives, as Kafka's long poll does (the mock cluster and
    // Tansu gather a fetch's worth first).
    let app = crate::props("KCONC_BENCH_PROPS")
        .into_iter()
        .fold(App::new().brokers(bootstrap), |app, (k, v)| app.property(k, v))
        .subscriber(sub)
        .start()
        .map_err(|e| e.to_string())?;
    let stats = app.stats_handle("low-rate").ok_or("no such subscriber")?;
    let until = Instant::now() + Duration::from_secs(60);
    while stats.assigned_partitions().len() < PARTITIONS as usize {
        if Instant::now() > until {
            return Err("not assigned every partition within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One record per batch (Tansu 0.6.0 skips the rest of a batch a fetch
    // starts inside), evenly over the partitions, paced.
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (stop, bootstrap, topic) = (stop.clone(), bootstrap.to_owned(), topic.to_owned());
        std::thread::spawn(move || -> Result<u64, String> {
            let producer =
                TestProducer::with_properties(&bootstrap, &[("batch.num.messages", "1"), ("linger.ms", "0")])
                    .map_err(|e| e.to_string())?;
            let every = Duration::from_secs(1) / (PER_PARTITION * PARTITIONS as u32);
            let start = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = (sent % PARTITIONS as u64) as i32;
                producer
                    .send(&topic, Some(p), None, format!("{{\"n\":{sent}}}").as_bytes())
                    .map_err(|e| e.to_string())?;
                sent += 1;
                let next = start + every * sent as u32;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
            Ok(sent)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s0, t0) = (stats.snapshot(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (s1, took) = (stats.snapshot(), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    let sent = producing.join().map_err(|_| "the producer thread panicked")??;
    app.shutdown().await;
    let handled = (s1.handled - s0.handled) as f64 / took;
    let requests = ((s1.commits + s1.commit_failures) - (s0.commits + s0.commit_failures)) as f64 / took;
    let idle = (s1.idle_commits - s0.idle_commits) as f64 / took;
    println!(
        "low rate     {PARTITIONS} partitions x {PER_PARTITION} msg/s, {took:.0} s measured ({sent} sent): \
         handled {handled:.0} msg/s; OffsetCommit requests {requests:.1}/s ({:.2} per message), \
         idle-commit requests asked {idle:.1}/s",
        requests / handled.max(1.0)
    );
    Ok(())
}

//! Ordering modes and per-partition backpressure against the embedded mock
//! cluster: `key` keeps each key's messages one at a time in offset order
//! while other keys run concurrently (a hot key does not hold them up),
//! `partition` does the same per partition, a backed-up partition is paused
//! alone without the member ever leaving the group, and a rebalance in key
//! mode skips nothing.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use kconc_runtime::{Message, OrderingMode, Subscriber};

/// A lane: a partition and a key (`None`: the whole partition).
type LaneId = (i32, Option<Vec<u8>>);

/// Watches lanes (a key within a partition, or a whole partition): no two
/// handlers of one lane at once, and each lane's messages started in
/// offset order. Records every violation instead of panicking in a handler.
#[derive(Default)]
struct LaneWatch {
    /// Whether each lane runs now, and the last offset it started.
    lanes: Mutex<HashMap<LaneId, (bool, i64)>>,
    violations: Mutex<Vec<String>>,
}

/// Marks a lane busy until dropped.
struct LaneGuard<'a>(&'a LaneWatch, LaneId);

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.0.lanes.lock().unwrap().get_mut(&self.1) {
            lane.0 = false;
        }
    }
}

impl LaneWatch {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Call when a handler starts; `lane` is the key (or `None` for the
    /// whole partition).
    fn start(&self, m: &Message, lane: Option<Vec<u8>>) -> LaneGuard<'_> {
        let id = (m.partition(), lane);
        let mut lanes = self.lanes.lock().unwrap();
        let entry = lanes.entry(id.clone()).or_insert((false, -1));
        if entry.0 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{id:?}: offset {} started while another ran", m.offset()));
        }
        if m.offset() <= entry.1 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{id:?}: offset {} started after {}", m.offset(), entry.1));
        }
        *entry = (true, m.offset());
        LaneGuard(self, id)
    }

    fn assert_clean(&self) {
        let v = self.violations.lock().unwrap();
        assert!(
            v.is_empty(),
            "{} ordering violations, first: {:?}",
            v.len(),
            &v[..v.len().min(5)]
        );
    }
}

/// Produces `records` (partition, key, payload) in order, one by one, and
/// returns each partition's end offset.
fn produce_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: &[(i32, Option<String>, String)],
) -> Vec<i64> {
    let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (p, key, payload) in records {
        let mut record = BaseRecord::<String, String>::to(topic).payload(payload).partition(*p);
        if let Some(k) = key {
            record = record.key(k);
        }
        while let Err((_, r)) = producer.send(record) {
            producer.poll(Duration::from_millis(10));
            record = r;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    end_offsets(bootstrap, topic, partitions)
}

/// A subscriber of `s` whose handlers are watched in their lane (`lane`
/// of each message: its key, or `None` for the partition) and sleep `ms`
/// milliseconds of each.
fn laned(s: &Scenario, lane: fn(&Message) -> Option<Vec<u8>>, ms: fn(&Message) -> u64) -> (Arc<LaneWatch>, Subscriber) {
    let watch = LaneWatch::new();
    let w = watch.clone();
    let sub = s.subscriber(move |m| {
        let w = w.clone();
        async move {
            let _lane = w.start(&m, lane(&m));
            let ms = ms(&m);
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    });
    (watch, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_mode_runs_each_key_in_offset_order_and_keys_concurrently() {
    let s = Scenario::new("keyed", "g-keyed", 8, 20_000, 100);
    // 0, 1 or 2 ms, varying by offset, so keys finish out of step.
    let (watch, sub) = laned(
        &s,
        |m| m.key().map(<[u8]>::to_vec),
        |m| u64::try_from((m.offset().wrapping_mul(2_654_435_761) >> 7) % 3).unwrap_or(0),
    );
    let sub = sub.ordering(OrderingMode::Key).concurrency(32);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    app.shutdown().await;
    watch.assert_clean();
    s.assert_all_handled();
    let max = s.rec.max_in_flight();
    assert!(
        max > 1 && max <= 32,
        "max in flight {max}: keys did not run concurrently within the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_mode_runs_messages_without_a_key_concurrently() {
    // One partition: were keyless messages sequential per partition, at
    // most one would ever run.
    let (topic, group, n) = ("keyless", "g-keyless", 100);
    let cluster = cluster(topic, 1);
    let records: Vec<_> = (0..n).map(|i| (0, None, i.to_string())).collect();
    let ends = produce_records(cluster.bootstrap_servers(), topic, 1, &records);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("keyless", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .ordering(OrderingMode::Key)
    .concurrency(8);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("every keyless message handled", DEADLINE, || rec.finished() >= n).await;
    app.shutdown().await;
    assert_all_handled(&rec.counts(), &ends);
    assert_eq!(rec.max_in_flight(), 8, "keyless messages should fill every slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_does_not_hold_up_the_other_keys() {
    // Half of all messages have one hot key, all in partition 0, four hot
    // to one cold there; partitions 1-3 hold cold keys only. Each handler
    // takes 5 ms, so the hot key alone needs >= 2 s while all the cold work
    // on partitions 1-3 (300 messages over 31 free slots) needs ~0.1 s.
    // Without a per-partition pause, partition 0's hot backlog would fill
    // the whole buffer and the other partitions would be read only as fast
    // as the hot key drains. Cold keys in partition 0 itself can get ahead
    // of the hot backlog only by that partition's buffer share
    // (max_buffered / 4): the price of bounded memory.
    let (topic, group, parts) = ("hot", "g-hot", 4);
    let cluster = cluster(topic, parts);
    let mut records = Vec::new();
    for i in 0..400 {
        records.push((0, Some("hot".to_owned()), i.to_string()));
        if i % 4 == 3 {
            records.push((0, Some(format!("p0-cold-{}", i % 50)), i.to_string()));
        }
    }
    for p in 1..parts {
        for i in 0..100 {
            records.push((p, Some(format!("p{p}-cold-{}", i % 50)), i.to_string()));
        }
    }
    let ends = produce_records(cluster.bootstrap_servers(), topic, parts, &records);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let (rec, watch) = (Recorder::new(), LaneWatch::new());
    let done_at: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Arc::default();
    let (r, w, d) = (rec.clone(), watch.clone(), done_at.clone());
    let sub = Subscriber::new("hot", [topic], group, move |m: Message| {
        let (r, w, d) = (r.clone(), w.clone(), d.clone());
        async move {
            let _g = r.start(&m);
            let key = m.key().map(<[u8]>::to_vec).unwrap_or_default();
            let _lane = w.start(&m, Some(key.clone()));
            tokio::time::sleep(Duration::from_millis(5)).await;
            d.lock().unwrap().insert(key, Instant::now());
        }
    })
    .ordering(OrderingMode::Key)
    .concurrency(32);
    let started = Instant::now();
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let total: usize = records.len();
    wait_for("every message handled", DEADLINE, || rec.distinct() >= total).await;
    app.shutdown().await;
    watch.assert_clean();
    assert_all_handled(&rec.counts(), &ends);
    let done = done_at.lock().unwrap();
    let hot = done[b"hot".as_slice()].duration_since(started);
    let cold_elsewhere = done
        .iter()
        .filter(|(k, _)| !k.starts_with(b"p0-") && k.as_slice() != b"hot")
        .map(|(_, t)| t.duration_since(started))
        .max()
        .unwrap();
    eprintln!("hot key done at {hot:?}; cold keys on other partitions done at {cold_elsewhere:?}");
    assert!(
        hot >= Duration::from_secs(2),
        "the hot key finished in {hot:?}: its 400 x 5 ms were not sequential"
    );
    assert!(
        cold_elsewhere * 2 < hot,
        "cold keys on other partitions finished at {cold_elsewhere:?}, the hot key at {hot:?}: the hot key held them up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_mode_runs_each_partition_sequentially_and_partitions_concurrently() {
    let s = Scenario::new("sequential", "g-sequential", 4, 400, 1_000);
    let (watch, sub) = laned(&s, |_m| None, |_m| 5);
    let sub = sub.ordering(OrderingMode::Partition).concurrency(16);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    app.shutdown().await;
    watch.assert_clean();
    s.assert_all_handled();
    let max = s.rec.max_in_flight();
    assert!(
        (2..=4).contains(&max),
        "max in flight {max}: partitions should run concurrently, one handler each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backed_up_partition_is_paused_alone_and_the_member_stays_in_the_group() {
    // Partition 0 holds 240 messages of 50 ms, one at a time: 12 s of work,
    // more than max.poll.interval.ms (10 s). Partitions 1-3 get a trickle
    // produced during the run, which must be handled promptly all along.
    let (topic, group, parts) = ("backed-up", "g-backed-up", 4);
    let (max_buffered, backlog) = (16, 240);
    let cluster = cluster(topic, parts);
    let records: Vec<_> = (0..backlog)
        .map(|i| (0, Some(format!("k{i}")), "0".to_owned()))
        .collect();
    produce_records(cluster.bootstrap_servers(), topic, parts, &records);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let epoch = Instant::now();
    let rec = Recorder::new();
    let worst_latency_ms = Arc::new(AtomicU64::new(0));
    let (r, worst) = (rec.clone(), worst_latency_ms.clone());
    let sub = Subscriber::new("backed-up", [topic], group, move |m: Message| {
        let (r, worst) = (r.clone(), worst.clone());
        async move {
            let _g = r.start(&m);
            if m.partition() == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                // The payload is when it was produced, in ms since `epoch`.
                let sent: u64 = m.payload_str().unwrap().parse().unwrap();
                let now = epoch.elapsed().as_millis() as u64;
                worst.fetch_max(now.saturating_sub(sent), AtomicOrdering::SeqCst);
            }
        }
    })
    .ordering(OrderingMode::Partition)
    .concurrency(8)
    .max_buffered(max_buffered)
    .property("max.poll.interval.ms", "10000");
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("partition 0 under way", DEADLINE, || rec.finished() >= 1).await;

    // The trickle: one message every 100 ms to partitions 1-3 while
    // partition 0 is backed up.
    let trickle_bootstrap = bootstrap.clone();
    let trickle = std::thread::spawn(move || {
        let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &trickle_bootstrap)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let mut sent = 0;
        for i in 0..60 {
            let payload = epoch.elapsed().as_millis().to_string();
            let key = format!("t{i}");
            let p = 1 + i % 3;
            producer
                .send(BaseRecord::to(topic).key(&key).payload(&payload).partition(p))
                .map_err(|(e, _)| e)
                .unwrap();
            producer.poll(Duration::ZERO);
            sent += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        sent
    });
    let trickled = tokio::task::spawn_blocking(move || trickle.join().unwrap())
        .await
        .unwrap();
    let p0_left = backlog - rec.by_partition().get(&0).map_or(0, Vec::len);
    assert!(
        p0_left > 0,
        "partition 0 drained before the trickle ended: not backed up"
    );
    wait_for("the backlog and the trickle handled", Duration::from_secs(90), || {
        rec.distinct() >= backlog + trickled
    })
    .await;
    let stats = app.stats("backed-up").unwrap();
    let pauses = app
        .stats_handle("backed-up")
        .expect("a subscriber of that name")
        .partition_pauses();
    app.shutdown().await;

    assert_eq!(
        (stats.assignments, stats.revocations),
        (1, 0),
        "the member left or was thrown out of the group: {stats:?}"
    );
    assert!(
        stats.max_waiting <= max_buffered as u64,
        "{} messages buffered, above max_buffered {max_buffered}",
        stats.max_waiting
    );
    let paused: Vec<i32> = pauses.iter().filter(|p| p.times > 0).map(|p| p.partition).collect();
    assert_eq!(paused, [0], "only partition 0 should have been paused: {pauses:?}");
    let worst = worst_latency_ms.load(AtomicOrdering::SeqCst);
    assert!(
        worst < 2_000,
        "a trickle message waited {worst} ms: the backed-up partition held the others up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_in_key_mode_skips_nothing_and_keeps_key_order_per_member() {
    let (topic, group, parts, n) = ("keyed-moving", "g-keyed-moving", 4, 4_000);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 100);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let member = |name: &str, rec: Arc<Recorder>, watch: Arc<LaneWatch>, work: Duration| {
        Subscriber::new(name, [topic], group, move |m: Message| {
            let (r, w) = (rec.clone(), watch.clone());
            async move {
                let _g = r.start(&m);
                let _lane = w.start(&m, m.key().map(<[u8]>::to_vec));
                tokio::time::sleep(work).await;
            }
        })
        .ordering(OrderingMode::Key)
        .concurrency(4)
    };
    let (a, a_watch) = (Recorder::new(), LaneWatch::new());
    let app_a = test_app(&bootstrap)
        .subscriber(member("a", a.clone(), a_watch.clone(), Duration::from_millis(10)))
        .start_in_test_mode()
        .unwrap();
    wait_for("member a under way", DEADLINE, || a.finished() >= 100).await;
    let (b, b_watch) = (Recorder::new(), LaneWatch::new());
    let app_b = test_app(&bootstrap)
        .subscriber(member("b", b.clone(), b_watch.clone(), Duration::from_millis(1)))
        .start_in_test_mode()
        .unwrap();
    wait_for("member b receives partitions", DEADLINE, || b.finished() > 0).await;
    let all = || {
        let mut all = a.counts();
        for (k, c) in b.counts() {
            *all.entry(k).or_default() += c;
        }
        all
    };
    wait_for("every message handled by a or b", DEADLINE, || {
        let all = all();
        ends.iter()
            .enumerate()
            .all(|(p, &e)| (0..e).all(|o| all.contains_key(&(p as i32, o))))
    })
    .await;
    wait_for("committed up to the ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    let a_stats = app_a.stats("a").unwrap();
    app_a.shutdown().await;
    app_b.shutdown().await;
    assert!(a_stats.revocations >= 1, "a never had partitions revoked: {a_stats:?}");
    a_watch.assert_clean();
    b_watch.assert_clean();
    assert_all_handled(&all(), &ends);
    // Redelivered: what a had in flight at the revoke (its concurrency), or
    // more when the mock refused the revoke's commit (see `redelivery_bound`).
    let duplicates = all().values().filter(|&&c| c > 1).count();
    let bound = redelivery_bound(&a_stats, 4, 100);
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates (bound {bound}); {a_stats:?}"
    );
}

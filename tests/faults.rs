//! Broker faults injected with librdkafka's mock cluster while the consumer
//! runs: a broker (the group coordinator and leader of some partitions) down
//! for 5 s, the group coordinator and partition leaders moving, and offset
//! commits failing. In each the consumer recovers by itself, every message is
//! handled, committed offsets reach the partition ends and never go
//! backwards, and redelivery stays within what was not yet committed. Each
//! test also checks that its fault had an effect, so it cannot pass because
//! the injection silently did nothing.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::rdkafka::mocking::MockCoordinator;
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{EmbeddedCluster, Message, Subscriber};

const OUTAGE: Duration = Duration::from_secs(5);

/// An embedded cluster of three brokers (ids 1, 2, 3) with one topic.
fn three_brokers(topic: &str, partitions: i32) -> EmbeddedCluster {
    if std::env::var_os("RUST_LOG").is_some() {
        kconc_runtime::init_tracing();
    }
    let c = EmbeddedCluster::start(3).expect("start the embedded cluster");
    c.create_topic(topic, partitions).expect("create the topic");
    c
}

/// Committed offsets, or `None` while they cannot be read (coordinator down).
fn try_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Option<Vec<Option<i64>>> {
    kconc_runtime::testing::committed_offsets(bootstrap, group, topic, partitions).ok()
}

/// A subscriber whose handler records what it saw and takes `work`.
fn recording(name: &str, topic: &'static str, group: &str, rec: &Arc<Recorder>, work: Duration) -> Subscriber {
    let r = rec.clone();
    Subscriber::new(name, [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(work).await;
        }
    })
    .commit_interval(Duration::from_millis(100))
}

/// Handlings beyond the first of each offset.
fn duplicates(counts: &HashMap<(i32, i64), usize>) -> usize {
    counts.values().map(|c| c - 1).sum()
}

/// Asserts that only offsets at or above `floor` (what was committed before
/// a fault) were handled more than once, and returns the duplicates.
fn assert_redelivered_only_above(counts: &HashMap<(i32, i64), usize>, floor: &[Option<i64>], ends: &[i64]) -> usize {
    for (&(p, o), &c) in counts {
        let floor = floor[p as usize].unwrap_or(0);
        assert!(
            c == 1 || o >= floor,
            "partition {p}: offset {o} handled {c} times though {floor} was committed before the fault"
        );
    }
    let dups = duplicates(counts);
    let uncommitted = ends.iter().sum::<i64>() - floor.iter().map(|c| c.unwrap_or(0)).sum::<i64>();
    assert!(
        (dups as i64) <= uncommitted,
        "{dups} duplicates, more than the {uncommitted} messages not committed before the fault"
    );
    dups
}

/// Reads the committed offsets every 50 ms from outside the consumer and
/// checks, for every reading, that no committed offset passes a message no
/// handler has seen yet (the reading is taken before the recorder's prefix,
/// which only grows).
struct Watcher {
    history: Arc<Mutex<Vec<Vec<Option<i64>>>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Watcher {
    fn start(bootstrap: &str, group: &'static str, topic: &'static str, parts: i32, rec: &Arc<Recorder>) -> Self {
        let history: Arc<Mutex<Vec<Vec<Option<i64>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, b, r) = (history.clone(), stop.clone(), bootstrap.to_owned(), rec.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(c) = try_committed(&b, group, topic, parts) {
                    let prefix = r.prefix(parts);
                    for (p, (c, seen)) in c.iter().zip(&prefix).enumerate() {
                        if c.is_some_and(|c| c > *seen) {
                            let handled = r.by_partition().remove(&(p as i32)).unwrap_or_default();
                            let below = c.unwrap_or(0);
                            let missing: Vec<i64> = (0..below).filter(|o| handled.binary_search(o).is_err()).collect();
                            panic!(
                                "partition {p}: committed {c:?} but {} offsets below it were never handled: {:?}..{:?}",
                                missing.len(),
                                missing.first(),
                                missing.last()
                            );
                        }
                    }
                    h.lock().unwrap().push(c);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { history, stop, thread }
    }

    /// Stops watching; asserts the committed offsets never went backwards
    /// and returns how many readings there were.
    fn finish(self, parts: i32) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the watcher panicked");
        let history = self.history.lock().unwrap();
        for p in 0..parts as usize {
            let seq: Vec<i64> = history.iter().filter_map(|h| h[p]).collect();
            assert!(
                seq.windows(2).all(|w| w[0] <= w[1]),
                "partition {p}: committed offset went backwards: {seq:?}"
            );
        }
        history.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_five_seconds_loses_nothing() {
    let (topic, group, parts, n, extra) = ("outage", "g-outage", 6, 6_000, 600);
    let cluster = three_brokers(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let mock = cluster.mock().unwrap();
    // Broker 1 coordinates the group and leads partitions 0 and 3; brokers 2
    // and 3 lead the others. The outage (5 s) is longer than the tests'
    // session timeout (3 s): the consumer loses its assignment during it
    // (librdkafka's own session timer; the mock evicts the member too) and
    // rejoins afterwards, so this covers lost partitions and redelivery of
    // what was handled but not committed, not only reconnection.
    const DOWN: i32 = 1;
    for p in 0..parts {
        mock.partition_leader(topic, p, Some(p % 3 + 1)).unwrap();
    }
    mock.coordinator(MockCoordinator::Group(group.into()), DOWN).unwrap();
    produce(&bootstrap, topic, parts, n, 100);

    let rec = Recorder::new();
    let watcher = Watcher::start(&bootstrap, group, topic, parts, &rec);
    // While commits fail, each partition is read at most this far past its
    // last commit: what the member handles again afterwards is bounded.
    const MAX_UNCOMMITTED: usize = 200;
    let sub = recording("outage", topic, group, &rec, Duration::from_millis(4))
        .concurrency(4)
        .max_uncommitted(MAX_UNCOMMITTED);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("outage").unwrap();
    wait_for("consumption under way", DEADLINE, || rec.finished() >= 500).await;
    let before = committed(&bootstrap, group, topic, parts);

    mock.broker_down(DOWN).unwrap();
    let down_at = Instant::now();
    // More messages arrive during the outage (those for broker 1's
    // partitions wait in the producer until it is back).
    let producer = {
        let b = bootstrap.clone();
        tokio::task::spawn_blocking(move || produce(&b, topic, parts, extra, 100))
    };
    // Give a commit that was in flight when the broker went down time to end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (commits_down, handled_down) = (stats.snapshot().commits, rec.finished());
    // The fault itself: a fixed outage is the point here.
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let (commits_up, handled_up) = (stats.snapshot().commits, rec.finished());
    mock.broker_up(DOWN).unwrap();
    let up_at = Instant::now();
    let outage = up_at - down_at;
    assert!(outage >= OUTAGE, "the outage lasted only {outage:?}");

    let ends = producer.await.unwrap();
    assert_eq!(ends.iter().sum::<i64>(), (n + extra) as i64);
    wait_for("commits resume after the outage", DEADLINE, || {
        stats.snapshot().commits > commits_up
    })
    .await;
    let first_commit = up_at.elapsed();
    wait_for("committed up to the ends", DEADLINE, || {
        try_committed(&bootstrap, group, topic, parts) == Some(all_committed(&ends))
    })
    .await;
    let recovery = up_at.elapsed();
    let s = stats.snapshot();
    app.shutdown().await;
    let readings = watcher.finish(parts);

    let counts = rec.counts();
    let dups = duplicates(&counts);
    eprintln!(
        "broker {DOWN} down {outage:?}: {} handled during the outage, first commit {first_commit:?} \
         and all committed {recovery:?} after it came back; {dups} duplicates; {readings} readings; {s:?}",
        handled_up - handled_down
    );
    // The outage was real: no commit can succeed without the coordinator,
    // though the consumer kept handling what it had.
    assert_eq!(
        commits_up, commits_down,
        "a commit succeeded while the coordinator was down: the fault had no effect; {s:?}"
    );
    assert!(
        handled_up > handled_down,
        "nothing was handled during the outage, so the stalled commits prove nothing; {s:?}"
    );
    // Under the classic protocol the member's session (3 s, the client's)
    // runs out and it rejoins. Under the consumer protocol (KIP-848) the
    // session is the broker's: the mock coordinator that was down kept the
    // member, which kept its partitions (seen: no revocation, no
    // duplicate). Either way nothing is lost or skipped (below).
    if !consumer_protocol() {
        assert!(
            s.revocations >= 1 && s.assignments >= 2,
            "a 5 s outage of the coordinator should outlast the 3 s session; {s:?}"
        );
    }
    assert!(readings > 3, "the watcher saw too little");
    assert_all_handled(&counts, &ends);
    assert_redelivered_only_above(&counts, &before, &ends);
    assert!(
        dups <= parts as usize * MAX_UNCOMMITTED,
        "{dups} messages handled again, more than max_uncommitted ({MAX_UNCOMMITTED}) per partition; {s:?}"
    );
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_moves_and_commits_continue() {
    let (topic, group, parts, n, extra) = ("moved", "g-moved", 6, 6_000, 600);
    let cluster = three_brokers(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let mock = cluster.mock().unwrap();
    // The coordinator starts on broker 1, which leads no partition, so that
    // taking broker 1 down later only tests whether the coordinator moved.
    for p in 0..parts {
        mock.partition_leader(topic, p, Some(p % 2 + 2)).unwrap();
    }
    mock.coordinator(MockCoordinator::Group(group.into()), 1).unwrap();
    produce(&bootstrap, topic, parts, n, 100);

    let rec = Recorder::new();
    let watcher = Watcher::start(&bootstrap, group, topic, parts, &rec);
    let sub = recording("moved", topic, group, &rec, Duration::from_millis(3)).concurrency(4);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("moved").unwrap();
    wait_for("consumption under way", DEADLINE, || {
        rec.finished() >= 500 && stats.snapshot().commits >= 2
    })
    .await;

    // Move the coordinator to broker 2, then take broker 1 down: commits
    // can only go on if the consumer found the new coordinator.
    let moved_at = Instant::now();
    mock.coordinator(MockCoordinator::Group(group.into()), 2).unwrap();
    let c = stats.snapshot().commits;
    wait_for("a commit after the move", DEADLINE, || stats.snapshot().commits > c).await;
    mock.broker_down(1).unwrap();
    let c = stats.snapshot().commits;
    let handled = rec.finished();
    wait_for("commits go on with the old coordinator down", DEADLINE, || {
        stats.snapshot().commits >= c + 3
    })
    .await;
    let followed = moved_at.elapsed();
    assert!(
        rec.finished() > handled,
        "nothing handled meanwhile: the commits could be empty"
    );

    // Move the coordinator and every partition's leader to broker 3, take
    // broker 2 down and produce more: those messages can only be fetched
    // from, and their offsets only committed to, broker 3.
    let moved_again_at = Instant::now();
    mock.coordinator(MockCoordinator::Group(group.into()), 3).unwrap();
    for p in 0..parts {
        mock.partition_leader(topic, p, Some(3)).unwrap();
    }
    mock.broker_down(2).unwrap();
    let ends = {
        let b = bootstrap.clone();
        tokio::task::spawn_blocking(move || produce(&b, topic, parts, extra, 100))
            .await
            .unwrap()
    };
    assert_eq!(ends.iter().sum::<i64>(), (n + extra) as i64);
    wait_for("committed up to the ends on broker 3 alone", DEADLINE, || {
        try_committed(&bootstrap, group, topic, parts) == Some(all_committed(&ends))
    })
    .await;
    let caught_up = moved_again_at.elapsed();
    let s = stats.snapshot();
    mock.broker_up(-1).unwrap();
    app.shutdown().await;
    let readings = watcher.finish(parts);

    let counts = rec.counts();
    let dups = duplicates(&counts);
    eprintln!(
        "coordinator moved: commits went on {followed:?} after the first move; everything \
         committed {caught_up:?} after the second; {dups} duplicates; {readings} readings; {s:?}"
    );
    assert!(readings > 3, "the watcher saw too little");
    assert_all_handled(&counts, &ends);
    if s.revocations == 0 {
        assert_eq!(dups, 0, "redelivery without a rebalance; {s:?}");
    }
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_errors_are_retried_and_commits_never_go_backwards() {
    let (topic, group, parts, n) = ("refused", "g-refused", 4, 4_000);
    let cluster = three_brokers(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, n, 100);

    let rec = Recorder::new();
    let watcher = Watcher::start(&bootstrap, group, topic, parts, &rec);
    // NOT_COORDINATOR and COORDINATOR_NOT_AVAILABLE make librdkafka mark the
    // coordinator dead and look it up again, which holds back heartbeats; with
    // the tests' 3 s session timeout that alone sometimes lost the
    // assignment (a rebalance, then redelivery of everything uncommitted).
    // A session timeout of 10 s keeps this test about failed commits.
    let sub = recording("refused", topic, group, &rec, Duration::from_millis(2))
        .concurrency(8)
        .commit_batch_size(50);
    let sub = classic_only_sub(sub, "session.timeout.ms", "10000");
    if consumer_protocol() {
        cluster.consumer_group_timing(Duration::from_secs(10), Duration::from_millis(500));
    }
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("refused").unwrap();
    wait_for("some commits before the errors", DEADLINE, || {
        rec.finished() >= 300 && stats.snapshot().commits >= 1
    })
    .await;
    let before = committed(&bootstrap, group, topic, parts);
    // The next 12 OffsetCommit requests fail with errors librdkafka treats
    // as retriable (it retries each request twice itself, so several reach
    // the runtime as failed commits).
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
    ]
    .repeat(4);
    cluster
        .mock()
        .unwrap()
        .request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    let injected_at = Instant::now();
    wait_for("a failed commit", DEADLINE, || stats.snapshot().commit_failures > 0).await;
    wait_for("committed up to the ends", DEADLINE, || {
        try_committed(&bootstrap, group, topic, parts) == Some(all_committed(&ends))
    })
    .await;
    let recovery = injected_at.elapsed();
    let s = stats.snapshot();
    app.shutdown().await;
    let readings = watcher.finish(parts);

    let counts = rec.counts();
    let dups = duplicates(&counts);
    eprintln!(
        "{} commit errors injected: all committed {recovery:?} later; {dups} duplicates; \
         {readings} readings of the committed offsets; {s:?}",
        errors.len()
    );
    assert!(
        s.commit_failures >= 1,
        "the injected commit errors were never seen: {s:?}"
    );
    assert!(readings > 3, "the watcher saw too little");
    assert_all_handled(&counts, &ends);
    assert_redelivered_only_above(&counts, &before, &ends);
    if s.revocations == 0 {
        assert_eq!(dups, 0, "redelivery without a rebalance; {s:?}");
    }
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

/// The commit of the last positions, refused because the member's epoch
/// (consumer protocol: `STALE_MEMBER_EPOCH`) or generation (classic:
/// `ILLEGAL_GENERATION`) moved on, is retried until the partitions are
/// committed to their ends, never dropped: no message comes after them
/// whose commit would cover it. librdkafka does not retry a manual commit
/// refused for a stale epoch itself (`rdkafka_cgrp.c`), it only hurries
/// the next heartbeat, so the retry is kconc's (seen failing with refused
/// positions counted as committed). Under classic librdkafka takes
/// `ILLEGAL_GENERATION` for a lost assignment and rejoins, so there the
/// messages also come again: the test checks the recovery, not the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_for_a_stale_member_epoch_is_retried_until_committed() {
    let (topic, group, parts, n) = ("stale-epoch", "g-stale-epoch", 2, 200);
    let cluster = three_brokers(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, n, 100);
    let refusal = if consumer_protocol() {
        cluster.consumer_group_timing(Duration::from_secs(10), Duration::from_millis(500));
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_STALE_MEMBER_EPOCH
    } else {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION
    };
    // Every commit the subscriber makes before the errors are used up is
    // refused: with 200 messages handled at once, those include the
    // commit of the last positions.
    cluster
        .mock()
        .unwrap()
        .request_errors(RDKafkaApiKey::OffsetCommit, &[refusal; 3]);

    let rec = Recorder::new();
    let sub = recording("stale", topic, group, &rec, Duration::ZERO);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("stale").unwrap();
    wait_for("all handled", DEADLINE, || rec.finished() >= n).await;
    wait_for("committed up to the ends", DEADLINE, || {
        try_committed(&bootstrap, group, topic, parts) == Some(all_committed(&ends))
    })
    .await;
    let s = stats.snapshot();
    app.shutdown().await;
    let counts = rec.counts();
    eprintln!("{refusal:?} x3: {} duplicates; {s:?}", duplicates(&counts));
    assert!(s.commit_failures >= 1, "no commit was refused: {s:?}");
    assert_all_handled(&counts, &ends);
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

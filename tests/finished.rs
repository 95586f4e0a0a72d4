//! Finished offsets above the committed one, remembered in the commit's
//! metadata, against librdkafka's mock cluster (which stores and returns
//! commit metadata): a partition's next owner handles only what had not
//! finished, after a rebalance to another member and after a restart; with
//! `commit_metadata = none`, everything above the committed offset comes
//! back. Also: an idle partition is committed at once, not at the interval.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::{App, CommitMetadata, Message, OrderingMode, Running, StatsHandle, Subscriber};

/// Messages per partition: a slow one at the head, the rest behind it.
const PER_PARTITION: usize = 501;
const PARTITIONS: i32 = 2;

/// What handlers saw: (partition, offset, key, start, end), in start order.
type Runs = Arc<Mutex<Vec<(i32, i64, String, Instant, Instant)>>>;

/// A subscriber whose handler records each run; with `hold_heads`, the
/// head of each partition (offset 0) never ends (until dropped by a
/// shutdown or a revoke's new owner takes it), nor, in key ordering, what
/// waits behind it in its key.
fn subscriber(
    name: &str,
    topic: &str,
    group: &str,
    hold_heads: bool,
    ordering: OrderingMode,
    metadata: CommitMetadata,
) -> (Subscriber, Runs) {
    let runs: Runs = Arc::default();
    let r = runs.clone();
    let sub = Subscriber::new(name, [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let start = Instant::now();
            if hold_heads && m.offset() == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            r.lock()
                .unwrap()
                .push((m.partition(), m.offset(), key, start, Instant::now()));
        }
    })
    .concurrency(20)
    .ordering(ordering)
    .commit_metadata(metadata)
    .commit_interval(Duration::from_millis(100))
    .revoke_timeout(Duration::from_millis(800))
    .shutdown_timeout(Duration::from_millis(300));
    (sub, runs)
}

/// Produces `PER_PARTITION` messages to each partition: key `slow` at
/// offset 0 and at every 50th offset, `k{i % 7}` elsewhere.
fn produce_heads(bootstrap: &str, topic: &str) -> Vec<i64> {
    let mut end = Vec::new();
    for p in 0..PARTITIONS {
        let records: Vec<(String, String)> = (0..PER_PARTITION)
            .map(|i| {
                let key = if i % 50 == 0 {
                    "slow".to_owned()
                } else {
                    format!("k{}", i % 7)
                };
                (key, i.to_string())
            })
            .collect();
        let records: Vec<(&str, &str)> = records.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        end.push(produce_records(bootstrap, topic, p, &records));
    }
    end
}

/// Runs the first member until everything but the held heads (and, in
/// key ordering, the `slow` key behind them) has finished and a commit has
/// been made since; returns the app, its stats and what it handled.
async fn first_member(
    bootstrap: &str,
    topic: &str,
    group: &str,
    ordering: OrderingMode,
    metadata: CommitMetadata,
) -> (Running, StatsHandle, Runs) {
    let (sub, runs) = subscriber("first", topic, group, true, ordering, metadata);
    let app = classic_only(test_app(bootstrap), "partition.assignment.strategy", "range")
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let stats = app.stats_handle("first").unwrap();
    let behind = |ordering| match ordering {
        // The held head and the other `slow` messages waiting behind it.
        OrderingMode::Key => PER_PARTITION.div_ceil(50),
        _ => 1,
    };
    let expect = (PER_PARTITION - behind(ordering)) * PARTITIONS as usize;
    wait_for("everything but the held heads handled", DEADLINE, || {
        runs.lock().unwrap().len() == expect
    })
    .await;
    // Committed: each head with the finished offsets above it (none with
    // `commit_metadata = none`: nothing is committed then, the head never
    // finishes).
    if metadata == CommitMetadata::Finished {
        let above = (PER_PARTITION - behind(ordering)) as u64;
        wait_for("the finished offsets committed in the metadata", DEADLINE, || {
            kconc_runtime::testing::committed_finished(bootstrap, group, topic, PARTITIONS).unwrap()
                == vec![Some((0, above)); PARTITIONS as usize]
        })
        .await;
    }
    (app, stats, runs)
}

/// A subscriber whose handler only records what it saw in `recorder`.
fn recording(name: &str, topic: &str, group: &str, recorder: &Arc<Recorder>) -> Subscriber {
    let r = recorder.clone();
    Subscriber::new(name, [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
        }
    })
}

fn handled(runs: &Runs) -> Vec<(i32, i64)> {
    let mut v: Vec<(i32, i64)> = runs.lock().unwrap().iter().map(|r| (r.0, r.1)).collect();
    v.sort_unstable();
    v
}

/// A rebalance moves a partition to a second member while its head is
/// still running at the first: the revoke commits the finished offsets
/// above the head in the metadata, and the new owner handles the head
/// only, skipping the 500 behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_hands_the_new_owner_only_what_had_not_finished() {
    let (topic, group) = ("finished-rebalance", "g-finished-rebalance");
    let cluster = cluster(topic, PARTITIONS);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce_heads(&bootstrap, topic);
    let (first, first_stats, _) = first_member(
        &bootstrap,
        topic,
        group,
        OrderingMode::Unordered,
        CommitMetadata::Finished,
    )
    .await;
    let (sub, runs) = subscriber(
        "second",
        topic,
        group,
        false,
        OrderingMode::Unordered,
        CommitMetadata::Finished,
    );
    let second = classic_only(test_app(&bootstrap), "partition.assignment.strategy", "range")
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let stats = second.stats_handle("second").unwrap();
    wait_for("the second member handles a moved partition's head", DEADLINE, || {
        !runs.lock().unwrap().is_empty()
    })
    .await;
    let moved = runs.lock().unwrap()[0].0;
    wait_for("the moved partition committed to its end", DEADLINE, || {
        committed(&bootstrap, group, topic, PARTITIONS)[moved as usize] == Some(ends[moved as usize])
    })
    .await;
    assert!(first_stats.snapshot().revocations >= 1);
    second.shutdown().await;
    first.shutdown().await;
    let s = stats.snapshot();
    assert_eq!(
        handled(&runs),
        vec![(moved, 0)],
        "the new owner handled only the head; {s:?}"
    );
    assert_eq!(s.skipped_already_done, PER_PARTITION as u64 - 1, "{s:?}");
    assert_eq!(s.commit_metadata_rejected, 0);
}

/// A restart (the first member stops with its heads still running; a new
/// process of the same group starts): only the heads are handled again.
/// In key ordering, the `slow` key's later messages, which waited behind
/// the head, are handled again too, after it and in order; the skipped
/// messages of other keys let none of them start early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_handles_only_what_had_not_finished_in_key_order() {
    for ordering in [OrderingMode::Unordered, OrderingMode::Key] {
        let topic = format!("finished-restart-{ordering}");
        let group = format!("g-{topic}");
        let cluster = cluster(&topic, PARTITIONS);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let ends = produce_heads(&bootstrap, &topic);
        let (first, _, first_runs) = first_member(&bootstrap, &topic, &group, ordering, CommitMetadata::Finished).await;
        first.shutdown().await;
        let (sub, runs) = subscriber("again", &topic, &group, false, ordering, CommitMetadata::Finished);
        let again = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        let stats = again.stats_handle("again").unwrap();
        wait_for("committed to the end", DEADLINE, || {
            committed(&bootstrap, &group, &topic, PARTITIONS) == all_committed(&ends)
        })
        .await;
        again.shutdown().await;
        let s = stats.snapshot();
        let unfinished: Vec<(i32, i64)> = (0..PARTITIONS)
            .flat_map(|p| {
                (0..PER_PARTITION as i64)
                    .filter(move |o| *o == 0 || (ordering == OrderingMode::Key && o % 50 == 0))
                    .map(move |o| (p, o))
            })
            .collect();
        assert_eq!(
            handled(&runs),
            unfinished,
            "{ordering}: only what had not finished; {s:?}"
        );
        let first_handled = handled(&first_runs);
        assert!(
            unfinished.iter().all(|u| !first_handled.contains(u)),
            "{ordering}: the first run finished one of them: the test proves nothing"
        );
        assert_eq!(
            s.skipped_already_done as usize,
            PER_PARTITION * PARTITIONS as usize - unfinished.len(),
            "{ordering}: {s:?}"
        );
        // Per key and partition, runs one at a time in offset order.
        if ordering == OrderingMode::Key {
            let runs = runs.lock().unwrap().clone();
            for p in 0..PARTITIONS {
                let slow: Vec<_> = runs.iter().filter(|r| r.0 == p && r.2 == "slow").collect();
                for w in slow.windows(2) {
                    assert!(w[0].1 < w[1].1, "offset {} ran before {}", w[1].1, w[0].1);
                    assert!(w[1].3 >= w[0].4, "offset {} began before {} ended", w[1].1, w[0].1);
                }
            }
        }
    }
}

/// With `commit_metadata = none`, a restart handles again everything above
/// the committed offset: all 501 of each partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_metadata_a_restart_handles_everything_above_the_commit_again() {
    let (topic, group) = ("finished-off", "g-finished-off");
    let cluster = cluster(topic, PARTITIONS);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce_heads(&bootstrap, topic);
    let (first, _, _) = first_member(&bootstrap, topic, group, OrderingMode::Unordered, CommitMetadata::None).await;
    first.shutdown().await;
    let (sub, runs) = subscriber(
        "again",
        topic,
        group,
        false,
        OrderingMode::Unordered,
        CommitMetadata::None,
    );
    let again = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = again.stats_handle("again").unwrap();
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, PARTITIONS) == all_committed(&ends)
    })
    .await;
    again.shutdown().await;
    assert_eq!(runs.lock().unwrap().len(), PER_PARTITION * PARTITIONS as usize);
    assert_eq!(stats.snapshot().skipped_already_done, 0);
}

/// Metadata another client committed (or garbage) is not used: nothing is
/// skipped, everything above the committed offset is handled, and the
/// partition is counted as rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_metadata_skips_nothing() {
    let topic = "finished-foreign";
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 1, 50, 5);
    // A group each: the mock cluster takes a commit from outside a group
    // only while it has never had members.
    for (group, metadata) in [
        ("g-finished-foreign-note", "some other client's note"),
        ("g-finished-foreign-garbage", "kconc:AQAKBQ-garbage"),
    ] {
        kconc_runtime::testing::commit_with_metadata(&bootstrap, group, topic, 0, 10, metadata).unwrap();
        let recorder = Recorder::new();
        let sub = recording("s", topic, group, &recorder);
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        let stats = app.stats_handle("s").unwrap();
        wait_for("committed to the end", DEADLINE, || {
            committed(&bootstrap, group, topic, 1) == all_committed(&ends)
        })
        .await;
        app.shutdown().await;
        let s = stats.snapshot();
        assert_eq!(recorder.by_partition()[&0], (10..50).collect::<Vec<_>>(), "{metadata}");
        assert_eq!(
            (s.skipped_already_done, s.commit_metadata_rejected),
            (0, 1),
            "{metadata}"
        );
    }
}

/// Once a partition has nothing in flight and nothing more to read, its
/// finished prefix is committed at once: with a commit interval of an hour
/// and a batch larger than the topic, the end is committed anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_is_committed_at_once() {
    let (topic, group) = ("idle-commit", "g-idle-commit");
    let cluster = cluster(topic, 2);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 2, 60, 5);
    let sub = Subscriber::new("s", [topic], group, |_m: Message| async {})
        .commit_interval(Duration::from_secs(3600))
        .commit_batch_size(10_000);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("s").unwrap();
    wait_for("committed to the end long before the interval", DEADLINE, || {
        committed(&bootstrap, group, topic, 2) == all_committed(&ends)
    })
    .await;
    assert!(stats.snapshot().idle_commits >= 1);
    app.shutdown().await;
}

/// Idle commits do not flood the coordinator (issue 28): with fetches
/// answered per record (`fetch.wait.max.ms=5`, as Kafka's long poll
/// answers; the mock cluster otherwise gathers several records per fetch),
/// 4 partitions x 25 msg/s for 2 s make at most one idle-commit request per
/// 100 ms (`commit_interval / 10`, at most 100 ms), not one per message,
/// and the end is still committed long before the interval (an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_commits_are_bounded_at_a_low_rate() {
    let (topic, group) = ("idle-bounded", "g-idle-bounded");
    let cluster = cluster(topic, 4);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = Subscriber::new("s", [topic], group, |_m: Message| async {}).commit_interval(Duration::from_secs(3600));
    let app = test_app(&bootstrap)
        .property("fetch.wait.max.ms", "5")
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let stats = app.stats_handle("s").unwrap();
    wait_for("assigned", DEADLINE, || stats.assigned_partitions().len() == 4).await;
    let started = Instant::now();
    let b = bootstrap.clone();
    let ends = tokio::task::spawn_blocking(move || {
        let producer = kconc_runtime::testing::TestProducer::new(&b).unwrap();
        for i in 0..200u32 {
            producer.send(topic, Some((i % 4) as i32), None, b"x").unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let ends = producer.flush(Duration::from_secs(30)).unwrap();
        (0..4).map(|p| ends[&(topic.to_owned(), p)]).collect::<Vec<i64>>()
    })
    .await
    .unwrap();
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 4) == all_committed(&ends)
    })
    .await;
    let took = started.elapsed();
    let s = stats.snapshot();
    app.shutdown().await;
    let bound = took.as_millis() as u64 / 100 + 2;
    assert!(
        s.idle_commits <= bound,
        "{} idle-commit requests in {took:?} for {} messages: more than one per 100 ms; {s:?}",
        s.idle_commits,
        s.handled
    );
    assert!(
        s.handled >= 200 && bound < 200,
        "the bound must be below one per message to prove anything"
    );
}

/// Static membership, on the mock cluster's KIP-848 group protocol
/// (`group.protocol=consumer`; its classic coordinator treats a rejoining
/// static member as a new one): two members, each with its own
/// `instance_id`; one stops, messages arrive meanwhile, and a new process
/// with its id starts within the session timeout. It gets its partitions
/// back, handles what arrived meanwhile, and the other member is never
/// revoked. The same with dynamic members, for the figures: the time from
/// the restart to the restarted member's assignment (and, static, its first
/// message), and the other member's revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_revoking_the_other() {
    let mut figures = Vec::new();
    for is_static in [true, false] {
        let topic = if is_static { "static-restart" } else { "dynamic-restart" };
        let group = format!("g-{topic}");
        let group = group.as_str();
        let cluster = cluster(topic, 4);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, topic, 4, 400, 10);
        let member = |id: &str, recorder: &Arc<Recorder>| {
            let sub = recording("s", topic, group, recorder);
            let sub = if is_static { sub.instance_id(id) } else { sub };
            App::new()
                .brokers(&bootstrap)
                .group_protocol(kconc_runtime::GroupProtocol::Consumer)
                .subscriber(sub)
                .start_in_test_mode()
                .unwrap()
        };
        let (ra, rb) = (Recorder::new(), Recorder::new());
        let a = member("a", &ra);
        let b = member("b", &rb);
        let (sa, sb) = (a.stats_handle("s").unwrap(), b.stats_handle("s").unwrap());
        wait_for("both members assigned", DEADLINE, || {
            let (pa, pb) = (sa.assigned_partitions(), sb.assigned_partitions());
            !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 4
        })
        .await;
        let a_parts = sa.assigned_partitions();
        let b_before = sb.snapshot();
        a.shutdown().await;
        // Messages for every partition while the member is away.
        produce(&bootstrap, topic, 4, 40, 10);
        let ra2 = Recorder::new();
        let restarted = Instant::now();
        let a2 = member("a", &ra2);
        let sa2 = a2.stats_handle("s").unwrap();
        wait_for("the restarted member assigned", DEADLINE, || {
            !sa2.assigned_partitions().is_empty()
        })
        .await;
        let assigned = restarted.elapsed();
        // A dynamic member's partitions went to the other member while it
        // was away, and with them the messages that arrived meanwhile.
        let first = if is_static {
            wait_for("the restarted member handles a message", DEADLINE, || {
                ra2.finished() > 0
            })
            .await;
            Some(restarted.elapsed())
        } else {
            None
        };
        let revoked = sb.snapshot().revocations - b_before.revocations;
        figures.push((is_static, assigned, first, revoked));
        if is_static {
            assert_eq!(sa2.assigned_partitions(), a_parts, "other partitions came back");
            assert_eq!(revoked, 0, "the other member was revoked");
        }
        a2.shutdown().await;
        b.shutdown().await;
    }
    println!("restart (static, to assignment, to first message, the other member's revokes): {figures:?}");
}

/// A record batch librdkafka cannot read (offsets 3..5), which the
/// committed metadata lists as finished (its previous owner already routed
/// it through the error policy): it is moved past without going through
/// the policy again. Under `on_error = stop` the partition would otherwise
/// stop there. Where the metadata lists only the batch's first offset (the
/// previous owner read the batch and finished its first record only), the
/// rest of the batch goes through the policy: the partition stops at 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_is_passed_only_as_far_as_the_metadata_lists_it() {
    for listed in [vec![3, 4, 5], vec![3]] {
        let topic = format!("finished-unreadable-{}", listed.len());
        let group = format!("g-{topic}");
        let (topic, group) = (topic.as_str(), group.as_str());
        let cluster = cluster(topic, 1);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, topic, 1, 3, 1);
        assert_eq!(produce_unreadable_batch(&bootstrap, topic, 0, 3), 3);
        let ends = produce(&bootstrap, topic, 1, 3, 1);
        let (metadata, _) = kconc_runtime::__private::encode_finished(3, &listed).unwrap();
        kconc_runtime::testing::commit_with_metadata(&bootstrap, group, topic, 0, 3, &metadata).unwrap();
        let recorder = Recorder::new();
        let sub = recording("s", topic, group, &recorder).on_error(kconc_runtime::OnError::Stop);
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        let stats = app.stats_handle("s").unwrap();
        if listed.len() == 3 {
            wait_for("committed to the end past the batch", DEADLINE, || {
                committed(&bootstrap, group, topic, 1) == all_committed(&ends)
            })
            .await;
        } else {
            wait_for("the partition stopped inside the batch", DEADLINE, || {
                !stats.stopped_partitions().is_empty()
            })
            .await;
            wait_for("committed up to the stop", DEADLINE, || {
                committed(&bootstrap, group, topic, 1) == [Some(4)]
            })
            .await;
        }
        app.shutdown().await;
        let s = stats.snapshot();
        if listed.len() == 3 {
            assert_eq!(recorder.by_partition()[&0], vec![6, 7, 8]);
            assert_eq!(
                (s.skipped_already_done, s.records_unreadable, s.stopped),
                (3, 0, 0),
                "{s:?}"
            );
        } else {
            assert!(recorder.by_partition().is_empty(), "{:?}", recorder.by_partition());
            assert_eq!(stats.stopped_partitions()[0].offset, 4);
            assert_eq!(
                (s.skipped_already_done, s.records_unreadable, s.stopped),
                (1, 1, 1),
                "{s:?}"
            );
        }
    }
}

/// A partition of `before` records whose group committed `base` with
/// `listed` as finished above it; once the records at and after where it
/// starts reading (`from`) are handled, `after` more are produced. Returns
/// what was handled, in order, and the counters, once all is committed.
async fn inherited_case(
    topic: &str,
    before: usize,
    (base, listed): (i64, &[i64]),
    from: i64,
    after: usize,
) -> (Vec<i64>, kconc_runtime::StatsSnapshot) {
    let group = format!("g-{topic}");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, 1, before, 5);
    let (metadata, _) = kconc_runtime::__private::encode_finished(base, listed).unwrap();
    kconc_runtime::testing::commit_with_metadata(&bootstrap, &group, topic, 0, base, &metadata).unwrap();
    let recorder = Recorder::new();
    let app = test_app(&bootstrap)
        .subscriber(recording("s", topic, &group, &recorder))
        .start_in_test_mode()
        .unwrap();
    let stats = app.stats_handle("s").unwrap();
    let first = before - from as usize;
    wait_for("the first records handled", DEADLINE, || recorder.distinct() == first).await;
    let ends = produce(&bootstrap, topic, 1, after, 5);
    assert_eq!(ends, [(before + after) as i64]);
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, &group, topic, 1) == all_committed(&ends)
    })
    .await;
    app.shutdown().await;
    (recorder.by_partition().remove(&0).unwrap_or_default(), stats.snapshot())
}

/// The review's case (M1): the group's committed offset, and the finished
/// offsets in its metadata, come from a longer log than the partition has
/// now (the topic was deleted and created again, or the log truncated):
/// (10, {12, 13, 14}) over 5 records. The fetch at 10 is out of range and
/// librdkafka resets to the start; when offsets 12-14 are written again,
/// they are new records, and every one of the 20 is handled. At a6d8e9a,
/// 12-14 were committed unhandled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_from_a_longer_log_skips_nothing() {
    let (handled, s) = inherited_case("finished-longer-log", 5, (10, &[12, 13, 14]), 0, 15).await;
    assert_eq!(handled, (0..20).collect::<Vec<_>>(), "{s:?}");
    assert_eq!((s.skipped_already_done, s.commit_metadata_stale), (0, 1), "{s:?}");
}

/// A committed offset inside the log whose set lists an offset at or past
/// the partition's end (the log was truncated below it after the commit):
/// (5, {12}) over 10 records. Reading starts at 5, in range; offset 12,
/// written later, is a new record and is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_past_the_partitions_end_skips_nothing() {
    let (handled, s) = inherited_case("finished-past-end", 10, (5, &[12]), 5, 10).await;
    assert_eq!(handled, (5..20).collect::<Vec<_>>(), "{s:?}");
    assert_eq!((s.skipped_already_done, s.commit_metadata_stale), (0, 1), "{s:?}");
}

/// A broker whose `offset.metadata.max.bytes` is below kconc's limit
/// refuses the commit (OFFSET_METADATA_TOO_LARGE): kconc commits without
/// metadata from then on, instead of failing every commit. Here the head of
/// the partition never finishes, so the commit that fails is one carrying
/// the 500 finished above it; the next commits the same offset without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_the_metadata_gets_commits_without_it() {
    use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (topic, group) = ("finished-refused", "g-finished-refused");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let records: Vec<(String, String)> = (0..PER_PARTITION).map(|i| (format!("k{i}"), i.to_string())).collect();
    let records: Vec<(&str, &str)> = records.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    produce_records(&bootstrap, topic, 0, &records);
    cluster.mock().unwrap().request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    let (sub, runs) = subscriber(
        "s",
        topic,
        group,
        true,
        OrderingMode::Unordered,
        CommitMetadata::Finished,
    );
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("s").unwrap();
    wait_for("everything but the head handled", DEADLINE, || {
        runs.lock().unwrap().len() == PER_PARTITION - 1
    })
    .await;
    wait_for("the head's offset committed without metadata", DEADLINE, || {
        kconc_runtime::testing::committed_finished(&bootstrap, group, topic, 1).unwrap() == [Some((0, 0))]
    })
    .await;
    let s = stats.snapshot();
    app.shutdown().await;
    assert_eq!((s.commit_metadata_refused, s.commit_failures), (1, 1), "{s:?}");
}

//! Revokes, against librdkafka's mock cluster: a revoked partition's
//! failed messages are not retried while the revoke waits, a lost
//! assignment is dropped at once (and readiness withdrawn until the member
//! rejoins), and a revoke holds the rebalance callback for at most
//! `revoke_timeout` even when the commit of the finished prefix is slow.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{Message, Subscriber};

/// Every message fails (after 10 to 38 ms) and is retried after 1 ms;
/// while a revoke waits for the running handlers of the partitions it
/// takes away, none of their retries may start (they would run on a
/// partition being handed to another member, and, with handlers always
/// running, stretch the revoke to its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_failed_messages_are_not_retried_while_the_revoke_waits() {
    let (topic, group, parts, n) = ("no-retry", "g-no-retry", 4, 400);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 40);
    let attempts: Arc<Mutex<Vec<(i32, u32, Instant)>>> = Arc::default();
    let at = attempts.clone();
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        at.lock().unwrap().push((m.partition(), m.attempt(), Instant::now()));
        let work = Duration::from_millis(10 + (m.offset() as u64 % 5) * 7);
        async move {
            tokio::time::sleep(work).await;
            Err::<(), _>("downstream is down")
        }
    })
    .concurrency(8)
    .ordering(kconc_runtime::OrderingMode::Key)
    .retries(1_000)
    .backoff(Duration::from_millis(1))
    .max_backoff(Duration::from_millis(1))
    .revoke_timeout(Duration::from_secs(3));
    let app_a = test_app(&bootstrap).subscriber(a).start_in_test_mode().unwrap();
    let a_stats = app_a.stats_handle("a").unwrap();
    wait_for("a retrying", DEADLINE, || a_stats.snapshot().retried >= 50).await;
    let b = Subscriber::new("b", [topic], group, |_m: Message| async {});
    let app_b = test_app(&bootstrap).subscriber(b).start_in_test_mode().unwrap();
    wait_for("a's revoke to begin", DEADLINE, || a_stats.snapshot().revocations >= 1).await;
    let began = Instant::now();
    wait_for("a's revoke to end", DEADLINE, || {
        a_stats.assigned_partitions().len() < parts as usize
    })
    .await;
    let took = began.elapsed();
    let kept: Vec<i32> = a_stats.assigned_partitions().iter().map(|(_, p)| *p).collect();
    app_b.shutdown().await;
    app_a.shutdown().await;
    // Allow for what was handed to a worker just before the revoke began.
    let late: Vec<_> = attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, attempt, at)| !kept.contains(p) && *attempt > 1 && *at > began + Duration::from_millis(50))
        .map(|(p, attempt, at)| (*p, *attempt, at.duration_since(began)))
        .collect();
    assert!(
        late.is_empty(),
        "{} retries of revoked partitions began during or after the revoke: {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    assert!(
        took < Duration::from_secs(2),
        "the revoke took {took:?}: it waited for retries (revoke_timeout 3 s)"
    );
}

/// A member whose assignment is lost (here: the coordinator answers a
/// heartbeat with UNKNOWN_MEMBER_ID) gives its partitions up at once,
/// without waiting for their handlers (the group has moved on without it),
/// is not ready until it has rejoined, and then goes on: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_assignment_is_dropped_at_once_and_withdraws_readiness_until_the_member_rejoins() {
    let (topic, group, parts, n) = ("lost", "g-lost", 2, 100);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, n, 10);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let stuck = Arc::new(AtomicUsize::new(0));
    let rec = Recorder::new();
    let (g, s, r) = (gate.clone(), stuck.clone(), rec.clone());
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        let (g, s, r) = (g.clone(), s.clone(), r.clone());
        async move {
            let _g = r.start(&m);
            if m.partition() == 0 && m.offset() == 10 {
                s.fetch_add(1, Ordering::SeqCst);
                let _ = g.acquire().await;
            }
        }
    })
    .revoke_timeout(Duration::from_secs(5))
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(a).start_in_test_mode().unwrap();
    let stats = app.stats_handle("a").unwrap();
    wait_for("the stuck handler runs and the member is ready", DEADLINE, || {
        stuck.load(Ordering::SeqCst) == 1 && app.health().ready
    })
    .await;
    if consumer_protocol() {
        // KIP-848's heartbeat (ConsumerGroupHeartbeat, API 68).
        cluster.request_errors_by_number(68, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID]);
    } else {
        cluster.mock().unwrap().request_errors(
            RDKafkaApiKey::Heartbeat,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID],
        );
    }
    wait_for("the assignment lost", DEADLINE, || stats.snapshot().revocations >= 1).await;
    let began = Instant::now();
    let mut seen_unready = false;
    // Given up: none assigned, or (under the consumer protocol, where the
    // member is back within about 100 ms) assigned again; either way while
    // the stuck handler still runs.
    wait_for("the lost partitions given up", DEADLINE, || {
        seen_unready |= !app.health().ready;
        stats.assigned_partitions().is_empty() || stats.snapshot().assignments >= 2
    })
    .await;
    let took = began.elapsed();
    // Under the consumer protocol the member is not ready for about
    // 100 ms, too short for this loop to be sure to see it.
    let must_see_unready = !consumer_protocol();
    wait_for("readiness withdrawn, then back once rejoined", DEADLINE, || {
        let ready = app.health().ready;
        seen_unready |= !ready;
        (seen_unready || !must_see_unready) && ready && stats.assigned_partitions().len() == parts as usize
    })
    .await;
    gate.add_permits(10);
    wait_for("committed to the ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    app.shutdown().await;
    assert_all_handled(&rec.counts(), &ends);
    assert!(
        took < Duration::from_millis(2_500),
        "the lost assignment was given up only after {took:?}: it waited for the stuck handler"
    );
}

/// The commit of a revoke is slow (the coordinator answers after 2.5 s):
/// the revoked partitions' handlers end 1 s into the revoke, so their
/// finished prefix moves and must be committed. The whole revoke, the
/// handlers' wait and the commit together, still holds the rebalance
/// callback for at most `revoke_timeout` (2 s); the wait for the commit
/// used to get a fresh `revoke_timeout` of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_holds_the_rebalance_at_most_revoke_timeout_even_when_its_commit_is_slow() {
    const SLOW_AT: i64 = 100;
    let (topic, group, parts, n) = ("slow-commit", "g-slow-commit", 4, 8_000);
    let cluster = cluster_with_coordinator(topic, parts, group, 3);
    let mock = cluster.mock().unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 100);
    let slow_started = Arc::new(AtomicUsize::new(0));
    // The slow handlers run until the test lets them end.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (ss, g) = (slow_started.clone(), gate.clone());
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        let slow = m.offset() == SLOW_AT;
        if slow {
            ss.fetch_add(1, Ordering::SeqCst);
        }
        let g = g.clone();
        async move {
            if slow {
                let _ = g.acquire().await;
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .concurrency(8)
    .commit_interval(Duration::from_millis(100))
    .revoke_timeout(Duration::from_secs(2));
    // Heartbeats answered after 2.5 s must stay within the session. Under
    // the consumer protocol librdkafka also times a heartbeat out after one
    // heartbeat interval (rdkafka_request.c), so that interval must be
    // longer than the round trip, or no member ever hears of a rebalance.
    if consumer_protocol() {
        cluster.consumer_group_timing(Duration::from_secs(10), Duration::from_secs(3));
    }
    let app = |sub| {
        let app = classic_only(test_app(&bootstrap), "session.timeout.ms", "8000");
        classic_only(app, "heartbeat.interval.ms", "2000")
            .subscriber(sub)
            .start_in_test_mode()
            .unwrap()
    };
    let app_a = app(a);
    wait_for("all four slow handlers running", DEADLINE, || {
        slow_started.load(Ordering::SeqCst) == parts as usize
    })
    .await;
    mock.broker_round_trip_time(3, Duration::from_millis(2_500)).unwrap();
    let app_b = app(Subscriber::new("b", [topic], group, |_m: Message| async {}));
    let a_stats = app_a.stats_handle("a").unwrap();
    wait_for("a's revoke to begin", DEADLINE, || a_stats.snapshot().revocations >= 1).await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    gate.add_permits(parts as usize);
    wait_for("a's revoke to end", DEADLINE, || {
        a_stats.assigned_partitions().len() < parts as usize
    })
    .await;
    let took = began.elapsed();
    mock.broker_round_trip_time(3, Duration::ZERO).unwrap();
    app_b.shutdown().await;
    app_a.shutdown().await;
    eprintln!("the revoke held the callback for {took:?} (revoke_timeout 2 s, commit round trip 2.5 s)");
    assert!(
        took > Duration::from_millis(1_000),
        "the revoke took {took:?}: it did not wait for the revoked partitions' handlers, so it proves nothing"
    );
    assert!(
        took < Duration::from_millis(2_500),
        "the revoke held the rebalance callback for {took:?}, beyond revoke_timeout (2 s)"
    );
}

/// Key order within one process across a quick reassign: the partition
/// is revoked (eager assignment) while a message of its only key runs for
/// 3 s, longer than `revoke_timeout`, and comes straight back to the same
/// member (the member that joined subscribes to another topic). The key's
/// messages of the new assignment, the unfinished one included, must wait
/// for the old run: no two runs of the key overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_a_partition_that_comes_back_waits_for_its_message_still_running() {
    let (topic, other, group) = ("comes-back", "comes-back-other", "g-comes-back");
    let cluster = cluster(topic, 1);
    cluster.create_topic(other, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 1, 30, 1);
    let runs: Arc<Mutex<Vec<(i64, Instant, Instant)>>> = Arc::default();
    let slow_started = Arc::new(AtomicUsize::new(0));
    let (r, ss) = (runs.clone(), slow_started.clone());
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        let (r, ss) = (r.clone(), ss.clone());
        async move {
            let start = Instant::now();
            let slow = m.offset() == 10 && ss.fetch_add(1, Ordering::SeqCst) == 0;
            let d = if slow { 3_000 } else { 5 };
            tokio::time::sleep(Duration::from_millis(d)).await;
            r.lock().unwrap().push((m.offset(), start, Instant::now()));
        }
    })
    .ordering(kconc_runtime::OrderingMode::Key)
    .revoke_timeout(Duration::from_millis(500))
    .commit_interval(Duration::from_millis(100));
    let eager = |sub| {
        classic_only(test_app(&bootstrap), "partition.assignment.strategy", "range")
            .subscriber(sub)
            .start_in_test_mode()
            .unwrap()
    };
    let app_a = eager(a);
    let a_stats = app_a.stats_handle("a").unwrap();
    wait_for("the slow run of offset 10 under way", DEADLINE, || {
        slow_started.load(Ordering::SeqCst) == 1
    })
    .await;
    let app_b = eager(Subscriber::new("b", [other], group, |_m: Message| async {}));
    wait_for("the partition revoked and assigned back to a", DEADLINE, || {
        let s = a_stats.snapshot();
        s.revocations >= 1 && s.assignments >= 2
    })
    .await;
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == all_committed(&ends)
    })
    .await;
    app_b.shutdown().await;
    app_a.shutdown().await;
    let mut runs = runs.lock().unwrap().clone();
    runs.sort_by_key(|(_, start, _)| *start);
    assert!(
        runs.iter().filter(|(o, ..)| *o == 10).count() >= 2,
        "offset 10 was not handled again after the reassign: the test proves nothing; {runs:?}"
    );
    for w in runs.windows(2) {
        let ((o1, _, end1), (o2, start2, _)) = (w[0], w[1]);
        assert!(
            start2 >= end1,
            "offset {o2} of the key began before offset {o1} had ended"
        );
    }
}

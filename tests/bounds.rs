//! Bounded memory and stuck handlers, against librdkafka's mock cluster:
//! retries waiting for their backoff count against `max_buffered`; a
//! handler stuck for ever holds its partition at `max_uncommitted` while
//! the others go on; `handler_timeout` cuts a stuck handler off; metrics
//! show the oldest running handler and health a partition whose commits
//! have stalled.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kconc_runtime::{Message, Subscriber};

/// Every message fails fast and waits 1 s and more for its retries: the
/// retries hold no handler slot, so without a bound reading would go on
/// (intake times total backoff: about 10^5 payloads held in a real
/// outage). Messages read and not concluded stay within `concurrency +
/// max_buffered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_waiting_for_their_backoff_count_against_max_buffered() {
    let (topic, group, n) = ("retry-bound", "g-retry-bound", 5_000);
    let cluster = cluster(topic, 1);
    produce(cluster.bootstrap_servers(), topic, 1, n, 500);
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let sub = Subscriber::new("retry-bound", [topic], group, move |_m: Message| {
        a.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("downstream is down") }
    })
    .concurrency(4)
    .max_buffered(16)
    .retries(8)
    .backoff(Duration::from_secs(1))
    .max_backoff(Duration::from_secs(10));
    let app = test_app(cluster.bootstrap_servers())
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let stats = app.stats_handle("retry-bound").unwrap();
    // Long enough for unbounded reading to run far ahead.
    wait_for("retries of retries", DEADLINE, || stats.snapshot().retried >= 60).await;
    let s = stats.snapshot();
    app.shutdown().await;
    // No message has failed its last attempt yet (that takes over a
    // minute), so everything read is still held.
    let concluded = s.failed - s.retried + s.handled;
    assert_eq!(concluded, 0, "{s:?}");
    assert!(
        s.received <= 4 + 16,
        "{} messages read and held at once, more than concurrency (4) + max_buffered (16); {s:?}",
        s.received
    );
    assert!(s.max_waiting <= 16, "{s:?}");
}

/// A handler stuck for ever at offset 5 of partition 0, and 100,000
/// messages behind it: the partition is read only up to `max_uncommitted`
/// offsets past its committed offset (5), so what kconc holds for it stays
/// bounded; partition 1 goes on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_handler_holds_its_partition_at_max_uncommitted_and_the_others_go_on() {
    const CAP: i64 = 1_000;
    let (topic, group, parts, n) = ("stuck", "g-stuck", 2, 100_000);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, n, 100);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let rec = Recorder::new();
    let (g, r) = (gate.clone(), rec.clone());
    let sub = Subscriber::new("stuck", [topic], group, move |m: Message| {
        let (g, r) = (g.clone(), r.clone());
        async move {
            let _g = r.start(&m);
            if m.partition() == 0 && m.offset() == 5 {
                let _ = g.acquire().await;
            }
        }
    })
    .concurrency(10)
    .max_uncommitted(CAP as usize)
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("stuck").unwrap();
    wait_for("partition 1 committed to its end", DEADLINE, || {
        committed(&bootstrap, group, topic, parts)[1] == Some(ends[1])
    })
    .await;
    let read_of_0 = rec.by_partition().get(&0).map_or(0, Vec::len) as i64;
    let s = stats.snapshot();
    let paused = stats.partition_pauses().iter().any(|p| p.partition == 0 && p.paused);
    assert_eq!(committed(&bootstrap, group, topic, parts)[0], Some(5));
    gate.add_permits(1);
    wait_for("partition 0 committed to its end once released", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    app.shutdown().await;
    assert!(
        read_of_0 <= 5 + CAP,
        "{read_of_0} messages of partition 0 were read behind the stuck offset 5 (max_uncommitted {CAP}); {s:?}"
    );
    assert!(paused, "partition 0 is not shown paused; {s:?}");
    assert!(s.uncommitted_window_pauses >= 1, "{s:?}");
    assert_all_handled(&rec.counts(), &ends);
}

/// `handler_timeout` cuts off a handler that hangs: its message fails with
/// a timeout error and follows the policy. On partition 0 offset 5 hangs
/// on its first attempt only (its retry succeeds); on partition 1 offset 7
/// hangs on every attempt, so after its retry it stops its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_timeout_cuts_a_hanging_handler_off_and_its_message_follows_the_policy() {
    let (topic, group, parts) = ("hanging", "g-hanging", 2);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, 40, 4);
    let sub = Subscriber::new("hanging", [topic], group, |m: Message| async move {
        let hangs = (m.partition(), m.offset()) == (0, 5) && m.attempt() == 1 || (m.partition(), m.offset()) == (1, 7);
        if hangs {
            std::future::pending::<()>().await;
        }
    })
    .handler_timeout(Duration::from_millis(200))
    .retries(1)
    .backoff(Duration::from_millis(10))
    .on_error(kconc_runtime::OnError::Stop)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let expected = vec![Some(ends[0]), Some(7)];
    wait_for("partition 0 at its end, partition 1 stopped at 7", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == expected
            && !app
                .stats_handle("hanging")
                .expect("a subscriber of that name")
                .stopped_partitions()
                .is_empty()
    })
    .await;
    let stats = app.stats("hanging").unwrap();
    let stopped = app
        .stats_handle("hanging")
        .expect("a subscriber of that name")
        .stopped_partitions();
    app.shutdown().await;
    assert_eq!((stopped[0].partition, stopped[0].offset), (1, 7), "{stopped:?}");
    assert!(stopped[0].reason.contains("handler_timeout"), "{stopped:?}");
    assert_eq!((stats.failed, stats.retried, stats.stopped), (3, 2, 1), "{stats:?}");
}

/// A partition held by its uncommitted window asks for its commit at once
/// (review N4): with a commit batch and an interval that never come due
/// (20,000 messages, an hour) and `max_uncommitted` 100, a partition of
/// 1,000 instant messages is committed to its end. At a6d8e9a it read 100,
/// waited for the interval, read 100 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_held_by_its_window_asks_for_its_commit_at_once() {
    let (topic, group) = ("window-commit", "g-window-commit");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 1, 1_000, 10);
    let sub = Subscriber::new("s", [topic], group, |_m: Message| async {})
        .commit_batch_size(20_000)
        .commit_interval(Duration::from_secs(3600))
        .max_uncommitted(100);
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("s").unwrap();
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == all_committed(&ends)
    })
    .await;
    let s = stats.snapshot();
    app.shutdown().await;
    assert!(s.uncommitted_window_pauses >= 9, "the window held the partition: {s:?}");
}

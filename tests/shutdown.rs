//! Shutdown, against librdkafka's mock cluster: `Running::shutdown` keeps
//! within the longest `shutdown_timeout` plus `SHUTDOWN_MARGIN` even when
//! the coordinator stops answering, and dropping a `Running` stops its
//! consumers instead of leaving them consuming and committing.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::{Message, Subscriber, SHUTDOWN_MARGIN};

/// Handlers of 0.1 to 2.5 s run when the group coordinator starts answering
/// every request 30 s late: the periodic commit in flight, the final commit
/// of what finishes during the drain and the close never return in time.
/// The shutdown still ends within `shutdown_timeout` (2 s) plus
/// `SHUTDOWN_MARGIN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_within_its_timeout_when_the_coordinator_stops_answering() {
    let (topic, group, parts, n) = ("unanswered", "g-unanswered", 2, 2_000);
    let cluster = cluster_with_coordinator(topic, parts, group, 3);
    let mock = cluster.mock().unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 100);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("unanswered", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            let ms = 100 + (m.offset() as u64 * 337) % 2_400;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    })
    .concurrency(10)
    .commit_interval(Duration::from_millis(100))
    .shutdown_timeout(Duration::from_secs(2));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("unanswered").unwrap();
    wait_for("handlers finishing and committed", DEADLINE, || {
        stats.snapshot().commits >= 2 && rec.finished() >= 10
    })
    .await;
    mock.broker_round_trip_time(3, Duration::from_secs(30)).unwrap();
    let running = rec.started.load(Ordering::SeqCst) - rec.finished();
    let started = Instant::now();
    app.shutdown().await;
    let took = started.elapsed();
    eprintln!("shutdown with an unanswering coordinator took {took:?}");
    assert!(
        took < Duration::from_secs(2) + SHUTDOWN_MARGIN,
        "the shutdown took {took:?}: beyond shutdown_timeout (2 s) + SHUTDOWN_MARGIN"
    );
    assert!(
        running > 0,
        "no handler was running at the shutdown: the test proves less than it says"
    );
}

/// A `Running` dropped without `shutdown()`: its consumer stops (drains,
/// commits what finished, leaves) instead of consuming and committing on
/// with nobody to stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_app_stops_its_consumers() {
    let (topic, group, parts) = ("dropped", "g-dropped", 2);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, 100, 10);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("dropped", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
        }
    })
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let stats = app.stats_handle("dropped").unwrap();
    wait_for("the first 100 handled", DEADLINE, || rec.finished() >= 100).await;
    drop(app);
    wait_for("the consumer stopped", DEADLINE, || !stats.is_running()).await;
    let received = stats.snapshot().received;
    let before = committed(&bootstrap, group, topic, parts);
    assert_eq!(
        before.iter().map(|c| c.unwrap_or(0)).sum::<i64>(),
        100,
        "what finished is committed when the dropped app stops"
    );
    produce(&bootstrap, topic, parts, 50, 10);
    assert_eq!(stats.snapshot().received, received);
    assert_eq!(committed(&bootstrap, group, topic, parts), before);
}

/// One deadline for the whole shutdown (review N2): a handler that never
/// ends holds the drain to `shutdown_timeout` (2 s), then a stop hook would
/// take a minute. The shutdown still ends within `shutdown_timeout` plus
/// `SHUTDOWN_MARGIN`: the hook gets what is left, is dropped at the
/// deadline, and the app's result says so. At a6d8e9a each hook had a
/// `shutdown_timeout` of its own, after the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_hook_shares_the_shutdowns_deadline() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let (topic, group) = ("slow-stop-hook", "g-slow-stop-hook");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, 1, 10, 1);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("s", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
    .shutdown_timeout(Duration::from_secs(2));
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let app = test_app(&bootstrap)
        .subscriber(sub)
        .on_stop(move |_| async move {
            let _guard = Dropped(d);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<(), std::io::Error>(())
        })
        .start_in_test_mode()
        .unwrap();
    wait_for("a handler running", DEADLINE, || rec.started.load(Ordering::SeqCst) > 0).await;
    let handle = app.shutdown_handle();
    let run = tokio::spawn(app.run_until_signal());
    let started = Instant::now();
    handle.shutdown();
    let result = run.await.unwrap();
    let took = started.elapsed();
    eprintln!("shutdown with a slow stop hook took {took:?}");
    assert!(
        took < Duration::from_secs(2) + SHUTDOWN_MARGIN,
        "the shutdown took {took:?}: beyond shutdown_timeout (2 s) + SHUTDOWN_MARGIN"
    );
    assert!(dropped.load(Ordering::SeqCst), "the hook was not dropped");
    assert!(
        matches!(&result, Err(kconc_runtime::Error::StopHook(e)) if e.to_string().contains("deadline")),
        "{result:?}"
    );
}

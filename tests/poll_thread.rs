//! Where user code runs. By default every handler runs on the tokio workers,
//! inside a task. The opt-in `FirstPoll` modes that run first polls on the
//! subscriber's poll thread keep every guarantee: a first poll that fails
//! there (the poll thread is not a task) runs again on a worker instead of
//! being judged, a runtime that has shut down never turns a message into a
//! committed skip, a future that kept its first waker is still woken, and
//! no handler begins inside a rebalance callback or after shutdown began.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use common::*;
use kconc_runtime::{FirstPoll, Handler, Message, ShutdownHandle, StatsHandle, Subscriber};

fn on_poll_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("kconc-poll-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_inside_tokio_tasks_on_the_workers_by_default() {
    let (topic, group, parts, n) = ("by-default", "g-by-default", 2, 500);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 10);
    let outside = Arc::new(AtomicUsize::new(0));
    let rec = Recorder::new();
    let (r, o) = (rec.clone(), outside.clone());
    // A handler that ends at once: the kind the poll thread used to run.
    let sub = Subscriber::new("by-default", [topic], group, move |m: Message| {
        let _g = r.start(&m);
        if tokio::task::try_id().is_none() || on_poll_thread() {
            o.fetch_add(1, Ordering::SeqCst);
        }
        async {}
    });
    let app = test_app(cluster.bootstrap_servers()).subscriber(sub).start().unwrap();
    wait_for("all handled", DEADLINE, || rec.finished() >= n).await;
    let stats = app.stats("by-default").unwrap();
    app.shutdown().await;
    assert_all_handled(&rec.counts(), &ends);
    assert_eq!(
        outside.load(Ordering::SeqCst),
        0,
        "handlers ran outside a tokio task (on the poll thread) by default"
    );
    assert_eq!(stats.first_polls_on_poll_thread, 0, "{stats:?}");
}

/// `tokio::task::id()` panics outside a task. Under the default `skip`
/// policy a first poll judged on the poll thread made that a skipped,
/// committed message (a loss); it must run again on a worker instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_poll_that_panics_on_the_poll_thread_runs_again_on_a_worker_and_is_never_skipped() {
    for mode in [FirstPoll::PollThread, FirstPoll::Auto] {
        let topic = format!("task-id-{}", mode.as_str());
        let group = format!("g-{topic}");
        let n = 1_000;
        let cluster = cluster(&topic, 1);
        let ends = produce(cluster.bootstrap_servers(), &topic, 1, n, 10);
        let seen: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let s = seen.clone();
        let sub = Subscriber::new("task-id", [topic.as_str()], group.as_str(), move |m: Message| {
            let s = s.clone();
            async move {
                let _ = tokio::task::id();
                s.lock().unwrap().insert(m.offset());
            }
        })
        .first_poll(mode)
        .commit_interval(Duration::from_millis(100));
        let app = test_app(cluster.bootstrap_servers()).subscriber(sub).start().unwrap();
        let bootstrap = app.bootstrap_servers().to_owned();
        wait_for("committed to the end", DEADLINE, || {
            committed(&bootstrap, &group, &topic, 1) == all_committed(&ends)
        })
        .await;
        let stats = app.stats("task-id").unwrap();
        app.shutdown().await;
        assert_eq!(
            seen.lock().unwrap().len(),
            n,
            "{mode:?}: messages committed without their handler having done its work; {stats:?}"
        );
        assert_eq!((stats.panicked, stats.failed), (0, 0), "{mode:?}: {stats:?}");
        assert!(
            stats.first_polls_rerun_on_worker >= 1,
            "{mode:?}: no first poll ran on the poll thread: the test proves nothing; {stats:?}"
        );
    }
}

/// A `Running` whose tokio runtime has shut down: first polls on the poll
/// thread then fail ("the runtime is being shut down"). Those messages must
/// never be committed, and the subscriber stops instead of reading on.
#[test]
fn a_runtime_that_shut_down_never_turns_messages_into_committed_skips() {
    let (topic, group) = ("runtime-gone", "g-runtime-gone");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let first = produce(&bootstrap, topic, 1, 50, 5);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("gone", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _g = r.start(&m);
        }
    })
    .first_poll(FirstPoll::PollThread)
    .commit_interval(Duration::from_millis(50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = runtime.block_on(async { test_app(&bootstrap).subscriber(sub).start().unwrap() });
    wait_until("the first 50 committed", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == all_committed(&first)
    });
    runtime.shutdown_background();
    let ends = produce(&bootstrap, topic, 1, 100, 5);
    wait_until(
        "the subscriber stops, or commits what no handler finished",
        DEADLINE,
        || committed(&bootstrap, group, topic, 1) != all_committed(&first) || !running.health().subscribers[0].running,
    );
    assert_eq!(
        committed(&bootstrap, group, topic, 1),
        all_committed(&first),
        "messages were committed after the runtime was gone (ends {ends:?}); {:?}",
        running.stats("gone")
    );
    assert_eq!(rec.finished(), 50, "no handler can have finished without a runtime");
    drop(running);
}

/// A future that registers the waker of its first poll only, and is woken
/// through it once a thread has done its work. Polling it once on the poll
/// thread with a waker that goes nowhere, then moving it to a worker,
/// lost the wake-up for ever.
struct WakesOnce {
    done: Arc<AtomicBool>,
    started: bool,
}

impl Future for WakesOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.done.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if !self.started {
            self.started = true;
            let (done, waker): (_, Waker) = (self.done.clone(), cx.waker().clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                done.store(true, Ordering::SeqCst);
                waker.wake();
            });
        }
        Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_that_keeps_its_first_waker_is_woken_on_its_worker() {
    let s = Scenario::new("first-waker", "g-first-waker", 2, 100, 10);
    let sub = s
        .subscriber(|_m| WakesOnce {
            done: Arc::default(),
            started: false,
        })
        .concurrency(8)
        .first_poll(FirstPoll::PollThread);
    let app = test_app(s.bootstrap()).subscriber(sub).start().unwrap();
    wait_for("every handler woken and ended", DEADLINE, || s.rec.finished() >= s.n).await;
    let stats = app.stats("first-waker").unwrap();
    app.shutdown().await;
    s.assert_all_handled();
    assert_eq!(stats.first_polls_on_poll_thread as usize, s.n, "{stats:?}");
}

/// A handler that begins shutdown itself: afterwards nothing more is handed
/// to the workers and nothing more begins on the poll thread; of what was
/// handed over before, a whole hand-over begins or none of it, in order, so
/// the offsets that began are exactly `0..k`: no message is left unstarted
/// below one that ran (without commit metadata, the one that ran would be
/// handled again after a restart). Two workers reaching the two parts of
/// one hand-over on either side of the signal used to leave such a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_began_nothing_more_begins_and_no_gap_is_left() {
    let concurrency = 16;
    for mode in [FirstPoll::PollThread, FirstPoll::Worker] {
        for round in 0..4 {
            let topic = format!("late-start-{}-{round}", mode.as_str());
            let group = format!("g-{topic}");
            let n = 2_000;
            let cluster = cluster(&topic, 1);
            produce(cluster.bootstrap_servers(), &topic, 1, n, 10);
            let handle: Arc<OnceLock<ShutdownHandle>> = Arc::default();
            let late = Arc::new(AtomicUsize::new(0));
            let begun: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
            let (h, l, b) = (handle.clone(), late.clone(), begun.clone());
            let handler = Handler::with_context(move |m: Message, cx: kconc_runtime::Context| {
                if cx.is_shutting_down() {
                    l.fetch_add(1, Ordering::SeqCst);
                }
                b.lock().unwrap().insert(m.offset());
                if m.offset() == 300 {
                    if let Some(h) = h.get() {
                        h.shutdown();
                    }
                }
                async {}
            });
            let sub = Subscriber::from_handler("late-start", [topic.as_str()], group.as_str(), handler)
                .concurrency(concurrency)
                .first_poll(mode);
            let app = test_app(cluster.bootstrap_servers()).subscriber(sub).start().unwrap();
            handle.set(app.shutdown_handle()).unwrap();
            tokio::time::timeout(DEADLINE, app.wait())
                .await
                .expect("the app stops after the handler's shutdown");
            let begun = std::mem::take(&mut *begun.lock().unwrap());
            let k = begun.len() as i64;
            assert!(k > 300 && k < n as i64, "{mode:?}: {k} handlers began");
            let last = begun.last().copied().unwrap_or(-1);
            let never: Vec<i64> = (0..last).filter(|o| !begun.contains(o)).collect();
            assert!(
                never.is_empty(),
                "{mode:?}: offsets {never:?} never began, below {last}, which did"
            );
            // The final commit reaches all of it (the handlers all end well).
            assert_eq!(
                committed(cluster.bootstrap_servers(), &group, &topic, 1),
                vec![Some(k)],
                "{mode:?}: the final commit is not the end of what began"
            );
            // What began after the signal had been handed over before it:
            // at most a concurrency's worth.
            let late = late.load(Ordering::SeqCst);
            assert!(
                late <= concurrency,
                "{mode:?}: {late} handlers began after shutdown had begun, more than were in flight"
            );
        }
    }
}

/// While a revoke waits for a slow handler of a partition it takes away,
/// the kept partitions' buffered messages go on, on the workers: even with
/// `first_poll = poll_thread`, no handler begins on the poll thread inside
/// the rebalance callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handler_begins_on_the_poll_thread_inside_a_rebalance_callback() {
    const SLOW_AT: i64 = 100;
    let (topic, group, parts, n) = ("in-callback", "g-in-callback", 4, 8_000);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 100);
    let stats: Arc<OnceLock<StatsHandle>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let on_poll_thread_inside = Arc::new(AtomicUsize::new(0));
    let on_worker_inside = Arc::new(AtomicUsize::new(0));
    let slow_started = Arc::new(AtomicUsize::new(0));
    let (st, w, inside_poll, inside_worker, ss) = (
        stats.clone(),
        watching.clone(),
        on_poll_thread_inside.clone(),
        on_worker_inside.clone(),
        slow_started.clone(),
    );
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        // Read on the poll thread itself, these are exact: the revoke
        // counts itself first and gives its partitions up last.
        if let Some(s) = st.get() {
            let revoking = s.snapshot().revocations == 1 && s.assigned_partitions().len() == parts as usize;
            if revoking && w.load(Ordering::SeqCst) {
                if on_poll_thread() {
                    inside_poll.fetch_add(1, Ordering::SeqCst);
                } else {
                    inside_worker.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let slow = m.offset() == SLOW_AT;
        if slow {
            ss.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            let d = if slow { 6_000 } else { 5 };
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
    })
    .concurrency(8)
    .revoke_timeout(Duration::from_secs(1))
    .first_poll(FirstPoll::PollThread);
    let app_a = test_app(&bootstrap).subscriber(a).start().unwrap();
    stats.set(app_a.stats_handle("a").unwrap()).unwrap();
    wait_for("all four slow handlers running", DEADLINE, || {
        slow_started.load(Ordering::SeqCst) == parts as usize
    })
    .await;
    let b = Subscriber::new("b", [topic], group, |_m: Message| async {});
    let app_b = test_app(&bootstrap).subscriber(b).start().unwrap();
    let a_stats = app_a.stats_handle("a").unwrap();
    wait_for("a's revoke to end", DEADLINE, || {
        a_stats.assigned_partitions().len() < parts as usize
    })
    .await;
    watching.store(false, Ordering::SeqCst);
    app_b.shutdown().await;
    app_a.shutdown().await;
    assert!(
        on_worker_inside.load(Ordering::SeqCst) > 0,
        "no handler began during the revoke: the test proves nothing"
    );
    assert_eq!(
        on_poll_thread_inside.load(Ordering::SeqCst),
        0,
        "handlers began on the poll thread inside the rebalance callback"
    );
}

/// `first_poll` in the attribute reaches the runtime.
mod attribute {
    use kconc_runtime::{subscriber, FirstPoll, Message};

    #[subscriber(topic = "t", group = "g", first_poll = "poll_thread", name = "on-poll-thread")]
    async fn on_poll_thread(_m: Message) {}

    #[subscriber(topic = "t", group = "g", name = "default-place")]
    async fn default_place(_m: Message) {}

    #[test]
    fn first_poll_is_set_by_the_attribute_and_worker_by_default() {
        let subs = kconc_runtime::testing::registered();
        let find = |name: &str| subs.iter().find(|s| s.name() == name).unwrap().first_poll_mode();
        assert_eq!(find("on-poll-thread"), FirstPoll::PollThread);
        assert_eq!(find("default-place"), FirstPoll::Worker);
    }
}

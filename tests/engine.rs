//! The engine's guarantees, each checked against librdkafka's in-process mock
//! cluster (a real Kafka-protocol broker): every message handled, committed
//! offsets equal partition ends, commits never pass an unfinished message and
//! never go backwards, the concurrency bound, errors and panics contained,
//! revoke and shutdown commit the finished prefix.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{FirstPoll, Message, Subscriber};

fn quick(sub: Subscriber) -> Subscriber {
    sub.commit_interval(Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_once_and_commits_reach_partition_ends() {
    let (topic, group, parts, n) = ("orders", "g-all", 4, 2_000);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 100);
    assert_eq!(ends.iter().sum::<i64>(), n as i64);

    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("all", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_micros(200 + (m.offset() as u64 % 7) * 300)).await;
        }
    })
    .concurrency(20);
    let app = test_app(cluster.bootstrap_servers())
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    wait_for("all messages handled", DEADLINE, || rec.finished() >= n).await;
    app.shutdown().await;

    let counts = rec.counts();
    assert_all_handled(&counts, &ends);
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "handled more than once in a clean run: {dups:?}");
    assert_eq!(rec.started.load(Ordering::SeqCst), n);
    let committed = committed(cluster.bootstrap_servers(), group, topic, parts);
    assert_eq!(
        committed,
        all_committed(&ends),
        "committed offsets must equal partition ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_never_passes_an_unfinished_message_and_catches_up_when_it_finishes() {
    let (topic, group, parts) = ("slow", "g-slow", 2);
    let cluster = cluster(topic, parts);
    // Partition 0 gets 50 messages, partition 1 gets 50; offset 5 of partition 0 is slow.
    let ends = produce(cluster.bootstrap_servers(), topic, parts, 100, 10);
    let bootstrap = cluster.bootstrap_servers().to_owned();

    let gate_slow = Arc::new(tokio::sync::Notify::new());
    let gate_p1 = Arc::new(tokio::sync::Notify::new());
    let p1_open = Arc::new(AtomicBool::new(false));
    let rec = Recorder::new();
    let (r, gs, g1, open) = (rec.clone(), gate_slow.clone(), gate_p1.clone(), p1_open.clone());
    let sub = Subscriber::new("slow", [topic], group, move |m: Message| {
        let (r, gs, g1, open) = (r.clone(), gs.clone(), g1.clone(), open.clone());
        async move {
            let _g = r.start(&m);
            if m.partition() == 0 && m.offset() == 5 {
                gs.notified().await;
            }
            // Partition 1 waits until partition 0's fast messages are all done,
            // so its later commits prove commits happened after they finished.
            if m.partition() == 1 && !open.load(Ordering::SeqCst) {
                g1.notified().await;
            }
        }
    })
    .concurrency(100)
    .commit_batch_size(1);
    let app = test_app(&bootstrap)
        .subscriber(quick(sub))
        .start_in_test_mode()
        .unwrap();

    // All of partition 0 but offset 5 finishes.
    wait_for("partition 0's 49 fast messages", DEADLINE, || {
        rec.by_partition().get(&0).map_or(0, Vec::len) == 50 && rec.finished() >= 49
    })
    .await;
    // Now let partition 1 finish and wait until its end is committed: every
    // commit after this point was made with offset 5 of partition 0 unfinished.
    p1_open.store(true, Ordering::SeqCst);
    gate_p1.notify_waiters();
    wait_for("partition 1 committed to its end", DEADLINE, || {
        committed(&bootstrap, group, topic, parts)[1] == Some(ends[1])
    })
    .await;
    assert_eq!(
        committed(&bootstrap, group, topic, parts)[0],
        Some(5),
        "partition 0 must stay committed at the unfinished offset 5"
    );

    gate_slow.notify_waiters();
    wait_for("partition 0 catches up to its end", DEADLINE, || {
        committed(&bootstrap, group, topic, parts)[0] == Some(ends[0])
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_concurrency_handlers_run_at_once() {
    let s = Scenario::new("bounded", "g-bounded", 4, 600, 50);
    let sub = s
        .subscriber(|_m| tokio::time::sleep(Duration::from_millis(3)))
        .concurrency(8);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("all handled", DEADLINE, || s.rec.finished() >= s.n).await;
    app.shutdown().await;
    let max = s.rec.max_in_flight();
    assert!(max <= 8, "{max} handlers ran at once with concurrency = 8");
    assert!(
        max >= 4,
        "only {max} handlers ever ran at once: dispatch is not concurrent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_handlers_do_not_stop_the_consumer() {
    let s = Scenario::new("faulty", "g-faulty", 3, 300, 30);
    let sub = s
        .subscriber(|m| async move {
            let i: usize = m.payload_str()?.parse()?;
            match i % 10 {
                3 => Err(format!("message {i} is refused").into()),
                7 => panic!("handler bug on message {i}"),
                _ => Ok::<(), kconc_runtime::BoxError>(()),
            }
        })
        .concurrency(10);
    let app = test_app(s.bootstrap())
        .subscriber(quick(sub))
        .start_in_test_mode()
        .unwrap();
    // Not a count of runs: with first polls on the poll thread, a failing
    // one runs again on a worker.
    s.wait_committed().await;
    let stats = app.stats("faulty").unwrap();
    app.shutdown().await;
    s.assert_all_handled();
    assert_eq!((stats.handled, stats.failed, stats.panicked), (240, 30, 30));
    assert_eq!(
        committed(s.bootstrap(), s.group, s.topic, s.parts),
        all_committed(&s.ends)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_handlers_commits_them_and_restart_skips_nothing() {
    let (topic, group, parts, n) = ("drain", "g-drain", 2, 400);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 40);
    let bootstrap = cluster.bootstrap_servers().to_owned();

    let first = Recorder::new();
    let r = first.clone();
    let sub = Subscriber::new("drain", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .concurrency(10)
    .shutdown_timeout(Duration::from_secs(10));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("some handled and a full set in flight", DEADLINE, || {
        first.finished() >= 20 && first.started.load(Ordering::SeqCst) >= first.finished() + 10
    })
    .await;
    app.shutdown().await;
    let started = first.started.load(Ordering::SeqCst);
    assert_eq!(
        first.finished(),
        started,
        "every handler that started must finish before shutdown returns"
    );
    assert!(started < n, "the test needs messages left over for the restart");
    let after_first = committed(&bootstrap, group, topic, parts);
    assert_eq!(
        after_first,
        first
            .prefix(parts)
            .into_iter()
            .map(|o| (o > 0).then_some(o))
            .collect::<Vec<_>>(),
        "shutdown commits exactly the finished prefix"
    );

    let second = Recorder::new();
    let r = second.clone();
    let sub = Subscriber::new("drain", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
        }
    });
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("the rest handled after restart", DEADLINE, || {
        second.finished() >= n - first.distinct()
    })
    .await;
    app.shutdown().await;
    let mut all = first.counts();
    for (k, c) in second.counts() {
        *all.entry(k).or_default() += c;
    }
    assert_all_handled(&all, &ends);
    let twice: Vec<_> = all.iter().filter(|(_, c)| **c > 1).map(|(k, _)| *k).collect();
    assert!(
        twice.is_empty(),
        "a drained shutdown must not cause redelivery: {twice:?}"
    );
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_are_retried_and_committed_offsets_never_go_backwards() {
    let (topic, group, parts, n) = ("flaky-commit", "g-flaky", 3, 3_000);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 100);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    // The next 6 OffsetCommit requests fail.
    cluster.mock().unwrap().request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 6],
    );

    // Watch the committed offsets from outside while the consumer runs.
    let history: Arc<Mutex<Vec<Vec<Option<i64>>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (h, s, b) = (history.clone(), stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                h.lock().unwrap().push(committed(&b, group, topic, parts));
            }
        })
    };

    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("flaky", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    })
    .concurrency(20)
    .commit_batch_size(50);
    let app = test_app(&bootstrap)
        .subscriber(quick(sub))
        .start_in_test_mode()
        .unwrap();
    wait_for("all handled", DEADLINE, || rec.finished() >= n).await;
    wait_for("commits reach the ends despite failures", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("flaky").unwrap();
    app.shutdown().await;
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    assert!(
        stats.commit_failures >= 1,
        "the injected commit errors were never seen: {stats:?}"
    );
    let history = history.lock().unwrap();
    assert!(history.len() > 3, "the watcher saw too little");
    for p in 0..parts as usize {
        let seq: Vec<i64> = history.iter().filter_map(|h| h[p]).collect();
        assert!(
            seq.windows(2).all(|w| w[0] <= w[1]),
            "partition {p}: committed offset went backwards: {seq:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_commits_the_finished_prefix_and_the_new_member_resumes_there() {
    let (topic, group, parts, n) = ("moving", "g-moving", 4, 4_000);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 100);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    // a is slow enough (4 x 10 ms handlers: ~10 s for everything) to still
    // be busy when b has joined, so partitions move with work left on them.
    let member = |name: &str, rec: Arc<Recorder>, work: Duration| {
        Subscriber::new(name, [topic], group, move |m: Message| {
            let r = rec.clone();
            async move {
                let _g = r.start(&m);
                tokio::time::sleep(work).await;
            }
        })
        .concurrency(4)
    };
    let a = Recorder::new();
    let app_a = test_app(&bootstrap)
        .subscriber(member("a", a.clone(), Duration::from_millis(10)))
        .start_in_test_mode()
        .unwrap();
    wait_for("member a under way", DEADLINE, || a.finished() >= 100).await;

    let b = Recorder::new();
    let app_b = test_app(&bootstrap)
        .subscriber(member("b", b.clone(), Duration::from_millis(1)))
        .start_in_test_mode()
        .unwrap();
    wait_for("member b receives partitions", DEADLINE, || b.finished() > 0).await;
    wait_for("every message handled by a or b", DEADLINE, || {
        let mut all = a.counts();
        for (k, c) in b.counts() {
            *all.entry(k).or_default() += c;
        }
        ends.iter()
            .enumerate()
            .all(|(p, &e)| (0..e).all(|o| all.contains_key(&(p as i32, o))))
    })
    .await;
    let a_stats = app_a.stats("a").unwrap();
    assert!(a_stats.revocations >= 1, "a never had partitions revoked: {a_stats:?}");
    app_a.shutdown().await;
    app_b.shutdown().await;

    // Where b started on each partition it took over must be exactly where a's
    // finished prefix stood: no gap (skip) and no redelivery beyond a's
    // in-flight messages (a's revoke waits for them, so none are expected).
    let a_prefix = a.prefix(parts);
    let b_parts = b.by_partition();
    assert!(!b_parts.is_empty());
    let mut duplicates = 0;
    for (p, offsets) in &b_parts {
        let first = offsets[0];
        let a_had = a_prefix[*p as usize];
        assert!(
            first <= a_had,
            "partition {p}: b started at {first} but a had only finished up to {a_had}: skipped"
        );
        duplicates += offsets.iter().filter(|o| a.counts().contains_key(&(*p, **o))).count();
    }
    // With the revoke's commit made, at most a's in-flight handlers (4) come
    // again; when the mock refused it, what a finished since its last
    // successful commit (see `redelivery_bound`). Never a skip, above.
    let bound = redelivery_bound(&a_stats, 4, 100);
    if a_stats.revoke_commit_failures > 0 {
        eprintln!("note: the broker refused a's revoke commit; {duplicates} duplicates (bound {bound})");
    }
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, bound {bound}; {a_stats:?}"
    );
    let mut all = a.counts();
    for (k, c) in b.counts() {
        *all.entry(k).or_default() += c;
    }
    assert_all_handled(&all, &ends);
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

/// A revoke waiting for a slow handler of a partition it takes away stalls
/// the member for at most `revoke_timeout`, and its kept partitions go on
/// right after. (librdkafka pauses the whole assignment before it hands an
/// incremental rebalance to the application and resumes it only when the
/// callback returns, so during the wait only what is already in flight or
/// buffered runs: measured, nothing new is fetched for the kept partitions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_revoked_partition_stalls_the_member_at_most_revoke_timeout() {
    const SLOW_AT: i64 = 100;
    let (topic, group, parts, n) = ("keeping", "g-keeping", 4, 8_000);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 100);
    // a: one 6 s handler per partition (at offset 100), 5 ms for the rest;
    // with 8 slots the slow ones leave 4 for the others.
    let starts: Arc<Mutex<Vec<(i32, std::time::Instant)>>> = Arc::default();
    let slow_started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (st, ss) = (starts.clone(), slow_started.clone());
    let a = Subscriber::new("a", [topic], group, move |m: Message| {
        st.lock().unwrap().push((m.partition(), std::time::Instant::now()));
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
    .revoke_timeout(Duration::from_secs(1));
    let app_a = test_app(&bootstrap).subscriber(a).start_in_test_mode().unwrap();
    wait_for("all four slow handlers running", DEADLINE, || {
        slow_started.load(Ordering::SeqCst) == parts as usize
    })
    .await;
    let b = Subscriber::new("b", [topic], group, |_m: Message| async {});
    let app_b = test_app(&bootstrap).subscriber(b).start_in_test_mode().unwrap();
    // The revoke begins when a counts it and ends when its partitions go.
    let a_stats = app_a.stats_handle("a").unwrap();
    wait_for("a's revoke to begin", DEADLINE, || a_stats.snapshot().revocations >= 1).await;
    let began = std::time::Instant::now();
    wait_for("a's revoke to end", DEADLINE, || {
        a_stats.assigned_partitions().len() < parts as usize
    })
    .await;
    let ended = std::time::Instant::now();
    let wait = ended - began;
    let kept: Vec<i32> = a_stats.assigned_partitions().iter().map(|(_, p)| *p).collect();
    assert!(!kept.is_empty(), "a kept no partition");
    let kept_started_since = |t: std::time::Instant| {
        starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, s)| kept.contains(p) && *s > t)
            .count()
    };
    // The kept partitions go on while their own slow handlers still run.
    wait_for("handlers on the kept partitions after the revoke", DEADLINE, || {
        kept_started_since(ended) >= 50
    })
    .await;
    let resumed = ended.elapsed();
    eprintln!("revoke waited {wait:?} (revoke_timeout 1 s); 50 handlers started on kept partitions {kept:?} {resumed:?} after it");
    // Handlers get revoke_timeout less what the commit may need (a
    // quarter of it, at most 1 s): 750 ms here.
    assert!(
        wait >= Duration::from_millis(600),
        "the revoke did not wait for the slow handler ({wait:?}): nothing shown"
    );
    assert!(
        wait < Duration::from_millis(1_500),
        "the revoke stalled {wait:?}, beyond revoke_timeout"
    );
    assert!(
        resumed < Duration::from_secs(3),
        "kept partitions resumed only {resumed:?} after the revoke, while the slow handlers still ran"
    );
    app_a.shutdown().await;
    app_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_never_exceed_max_poll_interval_and_the_buffer_stays_bounded() {
    // Every handler takes longer than max.poll.interval.ms (1.6 s > 1.5 s)
    // and there is a backlog of ~6 s of work: a consumer that stopped polling
    // while its handler slots are full would be thrown out of the group.
    let (topic, group, parts, n) = ("backlog", "g-backlog", 4, 8);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 16);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("backlog", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_millis(1_600)).await;
        }
    })
    .concurrency(2)
    .max_buffered(3)
    .property("max.poll.interval.ms", "1500");
    // The session as short as the poll interval: the broker's under the
    // consumer protocol.
    let sub = classic_only_sub(sub, "session.timeout.ms", "1500");
    let sub = classic_only_sub(sub, "heartbeat.interval.ms", "300");
    if consumer_protocol() {
        cluster.consumer_group_timing(Duration::from_millis(1_500), Duration::from_millis(300));
    }
    let app = test_app(cluster.bootstrap_servers())
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    wait_for("all handled", DEADLINE, || rec.finished() >= n).await;
    let stats = app.stats("backlog").unwrap();
    let bootstrap = app.bootstrap_servers().to_owned();
    app.shutdown().await;
    assert_eq!(stats.assignments, 1, "the member was rebalanced: {stats:?}");
    assert_eq!(stats.revocations, 0, "the member lost its partitions: {stats:?}");
    assert!(
        stats.max_waiting <= 3,
        "{} messages waited, more than max_buffered = 3",
        stats.max_waiting
    );
    assert!(stats.max_waiting >= 2, "the backlog never filled the buffer: {stats:?}");
    assert!(rec.max_in_flight() <= 2);
    let twice: Vec<_> = rec.counts().into_iter().filter(|(_, c)| *c > 1).collect();
    assert!(twice.is_empty(), "redelivered: {twice:?}");
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

/// Handlers begun on the poll thread (`FirstPoll`) keep every guarantee:
/// handlers that end at once, wait, or fail and are retried, under each
/// mode, are all handled, committed to the partition ends, bounded by
/// `concurrency`, and begun where the mode says. A first attempt that fails
/// on the poll thread runs again on a worker, uncounted, before its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_first_poll_mode_handles_each_message_once_and_commits_partition_ends() {
    let (parts, n) = (4, 1_200);
    for mode in [FirstPoll::Auto, FirstPoll::PollThread, FirstPoll::Worker] {
        let topic = format!("first-poll-{}", mode.as_str());
        let group = format!("g-{topic}");
        let cluster = cluster(&topic, parts);
        let ends = produce(cluster.bootstrap_servers(), &topic, parts, n, 50);
        let rec = Recorder::new();
        let r = rec.clone();
        let sub = Subscriber::new("mixed", [topic.as_str()], group.as_str(), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
                if m.offset() % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if m.offset() % 50 == 7 && m.attempt() == 1 {
                    return Err(format!("offset {} fails its first attempt", m.offset()));
                }
                Ok(())
            }
        })
        .concurrency(8)
        .retries(2)
        .backoff(Duration::from_millis(1))
        .first_poll(mode);
        let app = test_app(cluster.bootstrap_servers())
            .subscriber(quick(sub))
            .start()
            .unwrap();
        let retried = ends
            .iter()
            .map(|&e| (0..e).filter(|o| o % 50 == 7).count())
            .sum::<usize>();
        // Reruns of first polls make the number of runs vary: wait for
        // the commits to reach the ends, which needs every message done.
        let bootstrap = app.bootstrap_servers().to_owned();
        wait_for("committed to the ends", DEADLINE, || {
            committed(&bootstrap, &group, &topic, parts) == all_committed(&ends)
        })
        .await;
        let stats = app.stats("mixed").unwrap();
        app.shutdown().await;

        let counts = rec.counts();
        assert_all_handled(&counts, &ends);
        let reruns = stats.first_polls_rerun_on_worker as usize;
        let wrong: Vec<_> = counts
            .iter()
            .filter(|((_, o), c)| {
                let fails = o % 50 == 7;
                match (fails, mode) {
                    (false, _) => **c != 1,
                    // Failed, then retried.
                    (true, FirstPoll::Worker) => **c != 2,
                    // Failed on the poll thread, ran again on a worker
                    // (and failed there), then retried.
                    (true, FirstPoll::PollThread) => **c != 3,
                    (true, _) => !(2..=3).contains(*c),
                }
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{mode:?}: handled the wrong number of times: {wrong:?}"
        );
        assert_eq!(stats.retried as usize, retried, "{mode:?}");
        assert_eq!(
            counts.values().sum::<usize>(),
            n + retried + reruns,
            "{mode:?}: {stats:?}"
        );
        assert_eq!(stats.failed as usize, retried, "{mode:?}: reruns are not counted");
        assert!(rec.max_in_flight() <= 8, "{mode:?}: {} at once", rec.max_in_flight());
        assert_eq!(
            committed(&bootstrap, &group, &topic, parts),
            all_committed(&ends),
            "{mode:?}: committed offsets must equal partition ends"
        );
        let here = stats.first_polls_on_poll_thread as usize;
        match mode {
            FirstPoll::Worker => assert_eq!((here, reruns), (0, 0)),
            FirstPoll::PollThread => assert_eq!((here, reruns), (n + retried, retried)),
            // The first message always begins there. How many more do
            // depends on how long first polls take on this machine (a
            // debug build, a loaded CI box): the rule itself is checked
            // exactly by the unit test of `Inline` in engine/inline.rs.
            FirstPoll::Auto => assert!(here >= 1, "Auto never began a handler on the poll thread"),
        }
    }
}

/// Under `FirstPoll::Auto`, a handler that blocks its thread (here 5 ms)
/// leaves the poll thread after one message and runs on the workers,
/// concurrently; the poll thread tries one again only after 256 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_handler_leaves_the_poll_thread_at_once() {
    let s = Scenario::new("blocking", "g-blocking", 2, 300, 10);
    let sub = s
        .subscriber(|_m| async { std::thread::sleep(Duration::from_millis(5)) })
        .concurrency(4)
        .first_poll(FirstPoll::Auto);
    let app = test_app(s.bootstrap()).subscriber(quick(sub)).start().unwrap();
    wait_for("all handled", DEADLINE, || s.rec.finished() >= s.n).await;
    let stats = app.stats("blocking").unwrap();
    app.shutdown().await;
    s.assert_all_handled();
    let rec = &s.rec;
    assert!(
        stats.first_polls_on_poll_thread <= 2,
        "{} blocking handlers began on the poll thread",
        stats.first_polls_on_poll_thread
    );
    assert!(
        rec.max_in_flight() >= 2,
        "blocking handlers ran one at a time: they stayed on one thread"
    );
}

/// Handlers that end on their first poll free their slots as fast as
/// messages are read, so nothing but the loop's own bounds makes it stop
/// reading: a backlog must still be committed while it is consumed (and
/// rebalances served), not only once it has been read to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_quick_handlers_is_committed_while_it_is_consumed() {
    let (topic, group, parts, n) = ("backlog", "g-backlog", 4, 20_000);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 100);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = done.clone();
    let sub = Subscriber::new("backlog", [topic], group, move |_m: Message| {
        let d = d.clone();
        async move {
            // About 10 µs of work on the poll thread: 20,000 take 0.2 s.
            let until = std::time::Instant::now() + Duration::from_micros(10);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            d.fetch_add(1, Ordering::SeqCst);
        }
    })
    .concurrency(100)
    .first_poll(FirstPoll::PollThread);
    let app = test_app(cluster.bootstrap_servers())
        .subscriber(quick(sub))
        .start()
        .unwrap();
    wait_for("all handled", DEADLINE, || done.load(Ordering::SeqCst) >= n).await;
    let stats = app.stats("backlog").unwrap();
    let bootstrap = app.bootstrap_servers().to_owned();
    app.shutdown().await;
    assert!(
        stats.commits >= 5,
        "only {} commits while 20,000 messages were consumed (commit_batch_size 100)",
        stats.commits
    );
    assert_eq!(stats.first_polls_on_poll_thread as usize, n);
    assert_eq!(committed(&bootstrap, group, topic, parts), all_committed(&ends));
}

//! Batch handlers on the embedded cluster: every message handled once and
//! committed to the end for each batch size; a partial failure retries only
//! the failed messages, before anything after them in their lane; a bad
//! payload fails alone; key order; a shutdown with batches in flight
//! commits only what finished, and a restart handles the rest.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{all_committed, committed, test_app, wait_for, Scenario, StartInTestMode as _, DEADLINE};
use kconc_runtime::{subscriber, Batch, BatchOutcome, Handler, Json, Message, OrderingMode, Subscriber};

/// One call of a batch handler: its partition and its messages' (offset,
/// attempt, key).
type Call = (i32, Vec<(i64, u32, Option<Vec<u8>>)>);

/// Every call of a batch handler, in call order, and how many calls ran at
/// once, at most.
#[derive(Default)]
struct Calls {
    calls: Mutex<Vec<Call>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Calls {
    fn sizes(&self) -> Vec<usize> {
        self.calls.lock().unwrap().iter().map(|(_, m)| m.len()).collect()
    }
}

/// A batch subscriber of the scenario's topic that records each call (and
/// each message in the scenario's recorder), sleeps `ms` per call, and
/// fails what `fail` says (by offset and attempt).
fn batch_subscriber(s: &Scenario, calls: &Arc<Calls>, ms: u64, fail: fn(i64, u32) -> bool) -> Subscriber {
    let (rec, calls) = (s.rec.clone(), calls.clone());
    let handler = Handler::batch(move |msgs: Vec<Message>, _cx| {
        let (rec, calls) = (rec.clone(), calls.clone());
        async move {
            let now = calls.running.fetch_add(1, Ordering::SeqCst) + 1;
            calls.max_running.fetch_max(now, Ordering::SeqCst);
            let partition = msgs[0].partition();
            assert!(
                msgs.iter().all(|m| m.partition() == partition),
                "a batch holds one partition"
            );
            assert!(
                msgs.windows(2).all(|w| w[0].offset() < w[1].offset()),
                "a batch is in offset order"
            );
            calls.calls.lock().unwrap().push((
                partition,
                msgs.iter()
                    .map(|m| (m.offset(), m.attempt(), m.key().map(<[u8]>::to_vec)))
                    .collect(),
            ));
            let mut outcome = BatchOutcome::new();
            let guards: Vec<_> = msgs.iter().map(|m| rec.start(m)).collect();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            for (i, m) in msgs.iter().enumerate() {
                if fail(m.offset(), m.attempt()) {
                    outcome.fail(i, "failed on purpose");
                }
            }
            drop(guards);
            calls.running.fetch_sub(1, Ordering::SeqCst);
            outcome
        }
    });
    Subscriber::from_handler(s.topic, [s.topic], s.group, handler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_once_and_committed_for_each_batch_size() {
    for (max_batch, topic) in [(1, "batch-1"), (10, "batch-10"), (100, "batch-100"), (500, "batch-500")] {
        let s = Scenario::new(topic, topic, 4, 4_000, 1_000);
        let calls = Arc::new(Calls::default());
        let sub = batch_subscriber(&s, &calls, 2, |_, _| false)
            .max_batch(max_batch)
            .concurrency(3);
        let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
        s.wait_handled().await;
        s.wait_committed().await;
        let stats = app.stats(topic).unwrap();
        let metrics = app.metrics_text();
        app.shutdown().await;
        s.assert_all_handled();
        let twice: Vec<_> = s.rec.counts().into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(
            twice.is_empty(),
            "max_batch {max_batch}: handled more than once: {twice:?}"
        );
        let sizes = calls.sizes();
        assert!(
            sizes.iter().all(|&n| (1..=max_batch).contains(&n)),
            "max_batch {max_batch}: sizes {sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), 4_000);
        assert_eq!(stats.batches as usize, sizes.len());
        assert_eq!(stats.handled, 4_000, "each message of a batch counts as handled");
        if max_batch > 1 {
            assert!(
                sizes.iter().any(|&n| n > 1),
                "max_batch {max_batch}: no batch held two messages"
            );
        }
        let max = calls.max_running.load(Ordering::SeqCst);
        assert!(
            (1..=3).contains(&max),
            "max_batch {max_batch}: {max} batches ran at once, concurrency 3"
        );
        let text = metrics.unwrap();
        for metric in ["kconc_batches_total", "kconc_batch_size_count"] {
            let line = format!("{metric}{{subscriber=\"{topic}\"}} {}", sizes.len());
            assert!(text.contains(&line), "no `{line}` in /metrics");
        }
    }
}

/// In partition order, with offsets failing on their first attempt: each
/// is tried again alone or with the other failures of its batch, before
/// any later offset of its partition; nothing that finished runs again;
/// the group commits to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_failure_retries_only_the_failed_messages_in_lane_order() {
    let s = Scenario::new("batch-partial", "g-batch-partial", 2, 1_000, 1_000);
    let calls = Arc::new(Calls::default());
    let fail = |offset: i64, attempt: u32| attempt == 1 && offset % 7 == 3;
    let sub = batch_subscriber(&s, &calls, 1, fail)
        .max_batch(20)
        .concurrency(4)
        .ordering(OrderingMode::Partition)
        .retries(3)
        .backoff(Duration::from_millis(5));
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    let stats = app.stats("batch-partial").unwrap();
    app.shutdown().await;
    s.assert_all_handled();
    let failing = s
        .ends
        .iter()
        .map(|&end| (0..end).filter(|o| o % 7 == 3).count())
        .sum::<usize>();
    assert_eq!(stats.retried as usize, failing);
    for ((p, o), n) in s.rec.counts() {
        let want = if o % 7 == 3 { 2 } else { 1 };
        assert_eq!(n, want, "partition {p} offset {o}: handled {n} times");
    }
    // Per partition: an offset handled after a later one is a retry, and
    // everything later handled before it was in its first batch.
    let calls = calls.calls.lock().unwrap();
    let mut batch_of: HashMap<(i32, i64), usize> = HashMap::new();
    let mut seen: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    for (k, (p, msgs)) in calls.iter().enumerate() {
        for &(o, attempt, _) in msgs {
            if attempt == 1 {
                batch_of.insert((*p, o), k);
            } else {
                let first = batch_of[&(*p, o)];
                for &(later, in_batch) in seen.get(p).into_iter().flatten() {
                    assert!(
                        later < o || in_batch == first,
                        "partition {p}: {later} (batch {in_batch}) ran before the retry of {o} (from batch {first})"
                    );
                }
            }
            seen.entry(*p).or_default().push((o, k));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_with_batches_and_a_batch_may_hold_a_run_of_one_key() {
    let s = Scenario::new("batch-keys", "g-batch-keys", 4, 4_000, 20);
    let calls = Arc::new(Calls::default());
    let sub = batch_subscriber(&s, &calls, 3, |_, _| false)
        .max_batch(50)
        .concurrency(8)
        .ordering(OrderingMode::Key);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    app.shutdown().await;
    s.assert_all_handled();
    let calls = calls.calls.lock().unwrap();
    let mut last: HashMap<(i32, Vec<u8>), i64> = HashMap::new();
    let mut runs = 0;
    for (p, msgs) in calls.iter() {
        let mut keys_here: HashMap<Vec<u8>, usize> = HashMap::new();
        for (o, _, key) in msgs {
            let key = key.clone().expect("every record has a key");
            *keys_here.entry(key.clone()).or_default() += 1;
            if let Some(prev) = last.insert((*p, key.clone()), *o) {
                assert!(prev < *o, "partition {p}: key {key:?} handled {o} after {prev}");
            }
        }
        runs += keys_here.values().filter(|&&n| n > 1).count();
    }
    assert!(runs > 0, "no batch held two messages of one key: take-along never ran");
}

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

static DECODED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[subscriber(topic = "batch-decode", group = "g-batch-decode", max_batch = 50)]
async fn decode_orders(orders: Batch<Json<Order>>) {
    DECODED.lock().unwrap().extend(orders.iter().map(|Json(o)| o.id));
}

/// One record in five is not JSON: each fails alone (skipped by the
/// default policy), the handler gets the others, the group commits to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_payload_in_a_batch_fails_alone() {
    let (topic, parts) = ("batch-decode", 2);
    let cluster = common::cluster(topic, parts);
    let p = kconc_runtime::testing::TestProducer::new(cluster.bootstrap_servers()).unwrap();
    for i in 0..500_u64 {
        let payload = if i % 5 == 0 {
            b"not json".to_vec()
        } else {
            format!("{{\"id\":{i}}}").into_bytes()
        };
        p.send(topic, Some((i % 2) as i32), None, &payload).unwrap();
    }
    let ends: Vec<i64> = p.flush(DEADLINE).unwrap().values().copied().collect();
    let sub = kconc_runtime::testing::registered()
        .into_iter()
        .find(|s| s.name().ends_with("decode_orders"))
        .unwrap();
    let name = sub.name().to_owned();
    let app = test_app(cluster.bootstrap_servers())
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    wait_for("the group to commit to the end", DEADLINE, || {
        committed(cluster.bootstrap_servers(), "g-batch-decode", topic, parts) == all_committed(&ends)
    })
    .await;
    let stats = app.stats(&name).unwrap();
    app.shutdown().await;
    let mut ids = DECODED.lock().unwrap().clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..500).filter(|i| i % 5 != 0).collect::<Vec<_>>());
    assert_eq!((stats.skipped, stats.handled), (100, 400));
}

/// Shutdown while batches run: they are drained like messages, and what
/// is committed is what finished; a restart handles the rest, and nothing
/// below the first commit runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_batches_in_flight_commits_what_finished_and_a_restart_does_the_rest() {
    let s = Scenario::new("batch-stop", "g-batch-stop", 4, 3_000, 1_000);
    let calls = Arc::new(Calls::default());
    let sub = batch_subscriber(&s, &calls, 30, |_, _| false)
        .max_batch(20)
        .concurrency(4);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("batches to run", DEADLINE, || s.rec.finished() >= 200).await;
    app.shutdown().await;
    let at_stop = committed(s.bootstrap(), s.group, s.topic, s.parts);
    let handled_before = s.rec.counts();
    assert!(at_stop.iter().any(Option::is_some), "nothing committed at shutdown");
    for (p, c) in at_stop.iter().enumerate() {
        for o in 0..c.unwrap_or(0) {
            assert!(
                handled_before.contains_key(&(p as i32, o)),
                "partition {p}: {o} committed, never handled"
            );
        }
    }
    assert!(
        s.rec.distinct() < s.n,
        "shutdown came after everything was handled: the test proves nothing"
    );
    let sub = batch_subscriber(&s, &calls, 0, |_, _| false)
        .max_batch(20)
        .concurrency(4);
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    app.shutdown().await;
    s.assert_all_handled();
    // The drain finished every batch that had started, and the final
    // commit recorded what finished above each position: nothing runs twice.
    let twice: Vec<_> = s.rec.counts().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "handled again after the restart: {twice:?}");
}

/// A second member joins while the first runs slow batches: the revoke
/// waits for the batches of the partitions it takes away (or gives them up
/// whole), so the new owner starts where the old one's finished messages
/// end: nothing skipped, and nothing handled twice beyond what the
/// revoke's commit could not cover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_in_the_middle_of_batches_skips_nothing() {
    let s = Scenario::new("batch-revoke", "g-batch-revoke", 4, 2_000, 1_000);
    let (a_calls, b_calls) = (Arc::new(Calls::default()), Arc::new(Calls::default()));
    let a = batch_subscriber(&s, &a_calls, 100, |_, _| false)
        .max_batch(20)
        .concurrency(2);
    let app_a = test_app(s.bootstrap()).subscriber(a).start_in_test_mode().unwrap();
    wait_for("member a under way", DEADLINE, || s.rec.finished() >= 100).await;
    let b = batch_subscriber(&s, &b_calls, 1, |_, _| false)
        .max_batch(20)
        .concurrency(2);
    let app_b = test_app(s.bootstrap()).subscriber(b).start_in_test_mode().unwrap();
    wait_for("member b receives partitions", DEADLINE, || !b_calls.sizes().is_empty()).await;
    s.wait_handled().await;
    s.wait_committed().await;
    let a_stats = app_a.stats("batch-revoke").unwrap();
    assert!(a_stats.revocations >= 1, "a never had partitions revoked: {a_stats:?}");
    app_a.shutdown().await;
    app_b.shutdown().await;
    s.assert_all_handled();
    let duplicates: usize = s.rec.counts().values().map(|n| n - 1).sum();
    let bound = common::redelivery_bound(&a_stats, 2 * 20, 100);
    assert!(
        duplicates <= bound,
        "{duplicates} handled twice, bound {bound}; {a_stats:?}"
    );
}

/// With `reply`, each item's reply is published keyed like its input and
/// pointing at it, before the input counts as finished; a failed item
/// replies nothing and goes on alone (here: skipped).
#[subscriber(
    topic = "batch-replies",
    group = "g-batch-replies",
    reply = "batch-replies.out",
    max_batch = 20
)]
async fn echo(msgs: Batch<Message>) -> BatchOutcome {
    let mut outcome = BatchOutcome::new();
    for (i, m) in msgs.iter().enumerate() {
        outcome.reply(i, kconc_runtime::Text(format!("echo {}", m.offset())));
        if m.offset() % 10 == 9 {
            // Replied to, then failed: its reply is not published.
            outcome.fail(i, "no reply for this one");
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handler_replies_per_message() -> Result<(), kconc_runtime::Error> {
    let run = kconc_runtime::testing::TestApp::new()
        .only(["batch::echo"])
        .partitions(1)
        .start()
        .await?;
    let sent: Vec<_> = (0..100)
        .map(|i| kconc_runtime::testing::TestMessage::new(format!("m{i}")).key(format!("k{i}")))
        .collect();
    run.send_many("batch-replies", sent).await?;
    let stats = run.wait_handled("batch::echo", 100).await?;
    run.wait_idle("batch::echo").await?;
    assert_eq!((stats.handled, stats.skipped), (90, 10));
    assert!(stats.batches < 100, "{} calls for 100 messages", stats.batches);
    let replies = run.read("batch-replies.out", 90).await?;
    assert_eq!(replies.len(), 90);
    for r in &replies {
        let source: i64 = r.header_str("kconc-source-offset").unwrap().parse().unwrap();
        assert_ne!(source % 10, 9, "a failed item replied");
        assert_eq!(r.payload_str().unwrap(), format!("echo {source}"));
        assert_eq!(r.key_str().unwrap(), format!("k{source}"), "keyed like its input");
    }
    run.stop().await;
    Ok(())
}

/// `batch_wait`: a partition's messages wait for a full batch, or until the
/// first has waited that long; never longer. The messages are produced one
/// at a time while the subscriber runs, so without the wait each would
/// start alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_wait_fills_a_batch_and_ends_a_partial_one() {
    // max_batch 10, a wait far longer than the test: one batch of 10,
    // started as soon as the tenth is read. Then 5 more with a 3 s wait:
    // they start together once the first has waited 3 s.
    for (topic, n, wait) in [("batch-wait", 10, 600), ("batch-wait-partial", 5, 3)] {
        let cluster = common::cluster(topic, 1);
        let calls = Arc::new(Calls::default());
        let s = Scenario {
            topic,
            group: topic,
            parts: 1,
            n,
            ends: vec![0],
            rec: common::Recorder::new(),
            cluster,
        };
        let sub = batch_subscriber(&s, &calls, 0, |_, _| false)
            .max_batch(10)
            .batch_wait(Duration::from_secs(wait));
        let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
        let producer = kconc_runtime::testing::TestProducer::new(s.bootstrap()).unwrap();
        let mut ends = Vec::new();
        for i in 0..n {
            producer.send(topic, Some(0), None, format!("{i}").as_bytes()).unwrap();
            ends = producer.flush(DEADLINE).unwrap().values().copied().collect();
            // Each one read before the next is sent.
            wait_for("the message read", DEADLINE, || {
                app.stats(topic).is_some_and(|st| st.received as usize > i)
            })
            .await;
        }
        let s = Scenario { ends, ..s };
        s.wait_handled().await;
        s.wait_committed().await;
        app.shutdown().await;
        assert_eq!(calls.sizes(), [n], "{topic}");
    }
}

/// `handler_timeout` applies per call: a call that runs over it fails each
/// of its messages (retried here, and handled on the retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_timeout_fails_each_message_of_a_call_that_runs_over() {
    let s = Scenario::new("batch-timeout", "g-batch-timeout", 2, 200, 1_000);
    let rec = s.rec.clone();
    let handler = Handler::batch(move |msgs: Vec<Message>, _cx| {
        let rec = rec.clone();
        async move {
            if msgs[0].attempt() == 1 {
                std::future::pending::<()>().await;
            }
            for m in &msgs {
                drop(rec.start(m));
            }
        }
    });
    let sub = Subscriber::from_handler(s.topic, [s.topic], s.group, handler)
        .max_batch(50)
        .handler_timeout(Some(Duration::from_millis(100)))
        .retries(1)
        .backoff(Duration::from_millis(1));
    let app = test_app(s.bootstrap()).subscriber(sub).start_in_test_mode().unwrap();
    s.wait_handled().await;
    s.wait_committed().await;
    let stats = app.stats(s.topic).unwrap();
    app.shutdown().await;
    s.assert_all_handled();
    assert_eq!((stats.failed, stats.retried, stats.handled), (200, 200, 200));
}

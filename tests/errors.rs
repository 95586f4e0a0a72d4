//! The error policy against the embedded mock cluster: retries with backoff
//! that keep their place (and their key's order) without holding a handler
//! slot, dead letters with the original record and where it came from, a
//! dead-letter produce that fails holding the commit back, panics,
//! undecodable payloads and non-retryable errors following the policy, and
//! `stop` stopping only the failing partition.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::rdkafka::consumer::{BaseConsumer, Consumer as _};
use kconc_runtime::rdkafka::message::{Headers as _, Message as _};
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{Context, FromMessage as _, Json, Message, NonRetryable, OnError, OrderingMode, Subscriber};

/// A dead letter as read back: partition key, payload and headers.
#[derive(Debug)]
struct DeadLetter {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: HashMap<String, String>,
}

impl DeadLetter {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Reads the whole of a one-partition topic (waiting until it holds at
/// least `at_least` records).
fn read_topic(bootstrap: &str, topic: &str, at_least: usize) -> Vec<DeadLetter> {
    let consumer: BaseConsumer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let end = || end_offsets(bootstrap, topic, 1)[0];
    wait_until("dead letters produced", DEADLINE, || end() >= at_least as i64);
    let end = end();
    let mut out = Vec::new();
    let start = Instant::now();
    while (out.len() as i64) < end {
        assert!(
            start.elapsed() < DEADLINE,
            "read only {} of {end} dead letters",
            out.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), v.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(DeadLetter {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_succeed_on_the_third_attempt_in_key_order() {
    let (topic, group, parts, n) = ("retried", "g-retried", 2, 400);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 20);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    // Per (partition, key): the offsets in the order they succeeded.
    type Lanes = HashMap<(i32, Vec<u8>), Vec<i64>>;
    let succeeded: Arc<Mutex<Lanes>> = Arc::default();
    let attempts: Arc<Mutex<HashMap<(i32, i64), u32>>> = Arc::default();
    let (s, a) = (succeeded.clone(), attempts.clone());
    let sub = Subscriber::new("retried", [topic], group, move |m: Message| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            a.lock().unwrap().insert((m.partition(), m.offset()), m.attempt());
            if m.offset() % 10 == 0 && m.attempt() < 3 {
                return Err(format!("flaky on attempt {}", m.attempt()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let key = m.key().unwrap().to_vec();
            s.lock()
                .unwrap()
                .entry((m.partition(), key))
                .or_default()
                .push(m.offset());
            Ok(())
        }
    })
    .ordering(OrderingMode::Key)
    .concurrency(8)
    .retries(3)
    .backoff(Duration::from_millis(20))
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("committed up to the ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("retried").unwrap();
    app.shutdown().await;
    let attempts = attempts.lock().unwrap();
    let flaky: Vec<_> = attempts.iter().filter(|((_, o), _)| o % 10 == 0).collect();
    assert_eq!(flaky.len(), n / 10);
    assert!(
        flaky.iter().all(|(_, &a)| a == 3),
        "a flaky message did not end on attempt 3"
    );
    assert!(attempts.iter().filter(|((_, o), _)| o % 10 != 0).all(|(_, &a)| a == 1));
    assert_eq!(stats.retried, 2 * (n as u64 / 10), "{stats:?}");
    for (lane, offsets) in succeeded.lock().unwrap().iter() {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "{lane:?}: handled out of offset order around a retry: {offsets:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_holds_the_commit_but_not_a_handler_slot() {
    // One slot, 50 messages; offset 10 fails once and waits ~1-2 s for its
    // retry. Were the slot held during the wait, nothing else could run.
    let (topic, group, n) = ("held", "g-held", 50);
    let cluster = cluster(topic, 1);
    produce(cluster.bootstrap_servers(), topic, 1, n, 50);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let rec = Recorder::new();
    let retried_ok = Arc::new(AtomicBool::new(false));
    let others_done_before_retry = Arc::new(AtomicUsize::new(0));
    let (r, ok, before) = (rec.clone(), retried_ok.clone(), others_done_before_retry.clone());
    let sub = Subscriber::new("held", [topic], group, move |m: Message| {
        let (r, ok, before) = (r.clone(), ok.clone(), before.clone());
        async move {
            if m.offset() == 10 {
                if m.attempt() == 1 {
                    return Err("not yet");
                }
                before.store(r.finished(), AtomicOrdering::SeqCst);
                ok.store(true, AtomicOrdering::SeqCst);
            }
            let _g = r.start(&m);
            Ok(())
        }
    })
    .concurrency(1)
    .retries(1)
    .backoff(Duration::from_secs(2))
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("the commit stops at the waiting retry", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == [Some(10)]
    })
    .await;
    assert!(
        !retried_ok.load(AtomicOrdering::SeqCst),
        "offset 10 was retried before the commit was seen to wait for it"
    );
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == [Some(n as i64)]
    })
    .await;
    app.shutdown().await;
    assert_eq!(
        others_done_before_retry.load(AtomicOrdering::SeqCst),
        n - 1,
        "the other messages should all have run while offset 10 waited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_dead_lettered_once_with_their_origin() {
    let (topic, group, parts, n, dlq) = ("doomed", "g-doomed", 2, 200, "doomed.dlq");
    let cluster = cluster(topic, parts);
    cluster.create_topic(dlq, 1).unwrap();
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 10);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = Subscriber::new("doomed", [topic], group, |m: Message| async move {
        if m.offset() % 25 == 0 {
            return Err(format!("cannot bill order {}", m.payload_str().unwrap()));
        }
        Ok(())
    })
    .concurrency(8)
    .retries(1)
    .backoff(Duration::from_millis(10))
    .dead_letter(dlq)
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("committed up to the ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("doomed").unwrap();
    app.shutdown().await;
    let doomed: usize = ends.iter().map(|&e| (0..e).filter(|o| o % 25 == 0).count()).sum();
    assert_eq!(stats.dead_lettered, doomed as u64, "{stats:?}");
    let letters = read_topic(&bootstrap, dlq, doomed);
    assert_eq!(letters.len(), doomed, "each permanent failure exactly once");
    let mut origins: Vec<(i32, i64)> = Vec::new();
    for l in &letters {
        let (p, o): (i32, i64) = (
            l.header("kconc-original-partition").parse().unwrap(),
            l.header("kconc-original-offset").parse().unwrap(),
        );
        assert_eq!(o % 25, 0, "{l:?}");
        // produce() sends message i to partition i % parts, as offset i / parts.
        let i = o * i64::from(parts) + i64::from(p);
        assert_eq!(l.payload.as_deref(), Some(i.to_string().as_bytes()), "{l:?}");
        assert_eq!(l.key.as_deref(), Some(format!("k{}", i % 10).as_bytes()), "{l:?}");
        assert_eq!(l.header("kconc-original-topic"), topic);
        assert_eq!(l.header("kconc-group"), group);
        assert_eq!(l.header("kconc-attempts"), "2");
        assert!(!l.header("kconc-original-timestamp").is_empty(), "{l:?}");
        assert_eq!(l.header("kconc-error"), format!("cannot bill order {i}"));
        origins.push((p, o));
    }
    origins.sort_unstable();
    origins.dedup();
    assert_eq!(origins.len(), doomed, "a message was dead-lettered twice");
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: u64,
}

/// A handler's error whose cause (`source()`) says why.
#[derive(Debug)]
struct Invalid(NonRetryable);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("order is invalid")
    }
}

impl std::error::Error for Invalid {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_bad_json_and_non_retryable_errors_follow_the_policy() {
    // Offsets 0, 3, 6..: panic (retried once, then dead-lettered); 1, 4, ..:
    // the payload is not an `Order` (never retried); 2, 5, ..: an error
    // caused by a `NonRetryable` one (never retried; the dead letter names
    // both).
    let (topic, group, n, dlq) = ("mixed", "g-mixed", 30, "mixed.dlq");
    let cluster = cluster(topic, 1);
    cluster.create_topic(dlq, 1).unwrap();
    let ends = produce(cluster.bootstrap_servers(), topic, 1, n, 5);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = Subscriber::from_handler(
        "mixed",
        [topic],
        group,
        kconc_runtime::Handler::with_context(|m: Message, cx: Context| async move {
            match m.offset() % 3 {
                0 => panic!("boom at {}", m.offset()),
                1 => {
                    let _order = Json::<Order>::from_message(&m, &cx)?;
                    Ok(())
                }
                _ => Err(kconc_runtime::BoxError::from(Invalid(NonRetryable::new(
                    "amount is negative",
                )))),
            }
        }),
    )
    .concurrency(4)
    .retries(1)
    .backoff(Duration::from_millis(10))
    .on_error(OnError::DeadLetter(dlq.to_owned()))
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("mixed").unwrap();
    app.shutdown().await;
    let letters = read_topic(&bootstrap, dlq, n);
    assert_eq!(letters.len(), n);
    for l in &letters {
        let offset: i64 = l.header("kconc-original-offset").parse().unwrap();
        let (attempts, error) = (l.header("kconc-attempts"), l.header("kconc-error"));
        match offset % 3 {
            0 => assert!(
                attempts == "2" && error.contains("panicked") && error.contains("boom"),
                "{l:?}"
            ),
            1 => assert!(
                attempts == "1" && error.contains("JSON") && error.contains(&format!("@{offset}")),
                "{l:?}"
            ),
            // The error with its cause, as anyhow's `{:#}` shows it.
            _ => assert!(
                attempts == "1" && error == "order is invalid: amount is negative",
                "{l:?}"
            ),
        }
    }
    assert_eq!(stats.retried, n as u64 / 3, "only the panics are retried: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_produce_holds_the_commit_until_it_succeeds() {
    let (topic, group, n, dlq) = ("undeliverable", "g-undeliverable", 20, "undeliverable.dlq");
    let cluster = cluster(topic, 1);
    cluster.create_topic(dlq, 1).unwrap();
    produce(cluster.bootstrap_servers(), topic, 1, n, 5);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    // The next 20 produce requests fail with an error retrying can fix:
    // librdkafka retries each dead letter itself (every 100 ms) until its
    // message.timeout.ms (here 300 ms), then reports it timed out, and
    // kconc produces it again, until the errors are used up.
    cluster.mock().unwrap().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20],
    );
    let sub = Subscriber::new("undeliverable", [topic], group, |m: Message| async move {
        if m.offset() == 5 {
            return Err("permanently broken");
        }
        Ok(())
    })
    .property("message.timeout.ms", "300")
    .concurrency(4)
    .backoff(Duration::from_millis(200))
    .max_backoff(Duration::from_millis(400))
    .dead_letter(dlq)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    // The commit is read before the counter: if nothing was dead-lettered
    // after the commit was read, that commit must not pass offset 5.
    let mut highest = None;
    wait_for("the dead letter acknowledged", DEADLINE, || {
        let c = committed(&bootstrap, group, topic, 1)[0];
        let lettered = app.stats("undeliverable").unwrap().dead_lettered;
        if lettered == 0 {
            assert!(
                c.is_none_or(|c| c <= 5),
                "committed {c:?} past offset 5 before it was dead-lettered"
            );
            highest = highest.max(c);
        }
        lettered > 0
    })
    .await;
    let stats = app.stats("undeliverable").unwrap();
    assert!(
        stats.dead_letter_failures > 0,
        "no produce failed: the test proves nothing; {stats:?}"
    );
    assert_eq!(
        highest,
        Some(5),
        "the commit should have stood at offset 5 meanwhile; {stats:?}"
    );
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == [Some(n as i64)]
    })
    .await;
    app.shutdown().await;
    let letters = read_topic(&bootstrap, dlq, 1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("kconc-original-offset"), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_stops_only_the_failing_partition_and_says_why() {
    let (topic, group, parts, n) = ("stopping", "g-stopping", 3, 300);
    let cluster = cluster(topic, parts);
    let ends = produce(cluster.bootstrap_servers(), topic, parts, n, 30);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = Subscriber::new("stopping", [topic], group, |m: Message| async move {
        if m.partition() == 1 && m.offset() == 20 {
            return Err("ledger rejected the entry");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    })
    .concurrency(4)
    .retries(1)
    .backoff(Duration::from_millis(10))
    .on_error(OnError::Stop)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let expected = vec![Some(ends[0]), Some(20), Some(ends[2])];
    wait_for(
        "the other partitions finish; partition 1 stands at 20",
        DEADLINE,
        || committed(&bootstrap, group, topic, parts) == expected,
    )
    .await;
    let stopped = app
        .stats_handle("stopping")
        .expect("a subscriber of that name")
        .stopped_partitions();
    let stats = app.stats("stopping").unwrap();
    app.shutdown().await;
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(
        (stopped[0].topic.as_str(), stopped[0].partition, stopped[0].offset),
        (topic, 1, 20)
    );
    assert_eq!(stopped[0].reason, "ledger rejected the entry");
    assert_eq!((stats.stopped, stats.retried), (1, 1), "{stats:?}");
    // After a restart the stopped message is tried again: it is not lost.
    assert_eq!(committed(&bootstrap, group, topic, parts), expected);
}

/// `stop` holds back only what comes at or after the failed offset: what
/// comes before it still runs in its lane's order (and its retries still
/// run), and is committed. In key ordering: `@0` key a (held running until
/// the stop is reported), `@1` key a (waits behind it), `@2` key b fails;
/// `@3` a and `@4` b come after the stop. Unordered: `@0` fails its first
/// attempt after the stop is reported, and its retry still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_holds_back_only_what_comes_after_the_failed_message() {
    for ordering in [OrderingMode::Unordered, OrderingMode::Key] {
        let (topic, group) = ("stop-prefix", "g-stop-prefix");
        let cluster = cluster(topic, 1);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let records = [("a", "0"), ("a", "1"), ("b", "2"), ("a", "3"), ("b", "4")];
        produce_records(&bootstrap, topic, 0, &records);
        let release = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (r, seen) = (release.clone(), runs.clone());
        let failing = if ordering == OrderingMode::Key { 2 } else { 1 };
        let sub = Subscriber::new("stop-prefix", [topic], group, move |m: Message| {
            let (release, seen) = (r.clone(), seen.clone());
            async move {
                let offset = m.offset();
                let attempt = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(offset);
                    seen.iter().filter(|&&o| o == offset).count()
                };
                if offset == 0 && attempt == 1 {
                    while !release.load(AtomicOrdering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if ordering == OrderingMode::Unordered {
                        return Err("not yet");
                    }
                }
                if offset == failing {
                    return Err("ledger rejected the entry");
                }
                Ok(())
            }
        })
        .ordering(ordering)
        .concurrency(if ordering == OrderingMode::Key { 4 } else { 2 })
        .retries(if ordering == OrderingMode::Key { 0 } else { 1 })
        .backoff(Duration::from_millis(10))
        .on_error(OnError::Stop)
        .commit_interval(Duration::from_millis(20));
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        wait_for("the stop is reported", DEADLINE, || {
            !app.stats_handle("stop-prefix")
                .expect("a subscriber of that name")
                .stopped_partitions()
                .is_empty()
        })
        .await;
        release.store(true, AtomicOrdering::SeqCst);
        wait_for(
            &format!("{ordering:?}: everything before the failed offset {failing} is committed"),
            DEADLINE,
            || committed(&bootstrap, group, topic, 1) == [Some(failing)],
        )
        .await;
        let stopped = app
            .stats_handle("stop-prefix")
            .expect("a subscriber of that name")
            .stopped_partitions();
        app.shutdown().await;
        assert_eq!(stopped.len(), 1, "{stopped:?}");
        assert_eq!(stopped[0].offset, failing, "{stopped:?}");
        let mut ran: Vec<i64> = runs.lock().unwrap().clone();
        ran.sort_unstable();
        ran.dedup();
        assert!(
            ran.iter().all(|&o| o <= failing || ordering == OrderingMode::Unordered),
            "{ordering:?}: {ran:?}"
        );
        assert!((0..failing).all(|o| ran.contains(&o)), "{ordering:?}: {ran:?}");
        assert_eq!(committed(&bootstrap, group, topic, 1), [Some(failing)]);
    }
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct CannotSay;

impl std::fmt::Display for CannotSay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("this error cannot be formatted")
    }
}

impl std::error::Error for CannotSay {}

/// An error whose `Drop` panics.
#[derive(Debug)]
struct CannotGo;

impl std::fmt::Display for CannotGo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this error cannot be dropped")
    }
}

impl std::error::Error for CannotGo {}

impl Drop for CannotGo {
    fn drop(&mut self) {
        panic!("this error panics when dropped")
    }
}

/// Every outcome is final: a handler's error whose `Display` panics (offset
/// 5) or whose `Drop` panics (offset 10) is still concluded by the error
/// policy. Here, in key ordering with one key, nothing after them would
/// ever run if either stayed unconcluded (its lane held for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_panic_when_formatted_or_dropped_are_still_concluded() {
    let (topic, group, n) = ("grumpy", "g-grumpy", 30);
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 1, n, 1);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("grumpy", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            match m.offset() {
                5 => Err(Box::new(CannotSay) as kconc_runtime::BoxError),
                10 => Err(Box::new(CannotGo) as kconc_runtime::BoxError),
                _ => Ok(()),
            }
        }
    })
    .ordering(OrderingMode::Key)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("committed to the end", DEADLINE, || {
        committed(&bootstrap, group, topic, 1) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("grumpy").unwrap();
    app.shutdown().await;
    assert_all_handled(&rec.counts(), &ends);
    assert_eq!((stats.failed, stats.handled), (2, n as u64 - 2), "{stats:?}");
}

/// A dead letter that retrying cannot deliver (here the broker answers
/// every produce with TOPIC_AUTHORIZATION_FAILED) stops its partition,
/// saying why in health and metrics, instead of being retried for ever
/// with its partition's commits frozen and health green. The other
/// partition goes on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_retrying_cannot_deliver_stops_its_partition_and_says_why() {
    let (topic, group, parts, dlq) = ("forbidden", "g-forbidden", 3, "forbidden.dlq");
    let cluster = cluster(topic, parts);
    cluster.create_topic(dlq, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, parts, 300, 30);
    cluster.mock().unwrap().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100],
    );
    let sub = Subscriber::new("forbidden", [topic], group, |m: Message| async move {
        if m.partition() != 2 && m.offset() == 5 {
            return Err("poison");
        }
        Ok(())
    })
    .concurrency(4)
    .dead_letter(dlq)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    let expected = vec![Some(5), Some(5), Some(ends[2])];
    wait_for(
        "partitions 0 and 1 stopped at 5, partition 2 at its end",
        DEADLINE,
        || {
            committed(&bootstrap, group, topic, parts) == expected
                && app
                    .stats_handle("forbidden")
                    .expect("a subscriber of that name")
                    .stopped_partitions()
                    .len()
                    == 2
        },
    )
    .await;
    let stats = app.stats("forbidden").unwrap();
    let health = app.health();
    let metrics = app.metrics_text().unwrap();
    let stopped = app
        .stats_handle("forbidden")
        .expect("a subscriber of that name")
        .stopped_partitions();
    app.shutdown().await;
    for s in &stopped {
        assert_eq!(s.offset, 5, "{stopped:?}");
        assert!(
            s.reason.contains("retrying cannot fix it") && s.reason.contains("TopicAuthorizationFailed"),
            "{stopped:?}"
        );
    }
    assert!(health.healthy && !health.ready, "{health:?}");
    assert!(
        health.subscribers[0].problems.iter().any(|p| p.contains("dead letter")),
        "{health:?}"
    );
    assert_eq!(
        (stats.dead_letter_failures, stats.dead_lettered, stats.stopped),
        (2, 0, 2),
        "{stats:?}"
    );
    assert!(
        metrics.contains("kconc_dead_letter_failures_total{subscriber=\"forbidden\"} 2"),
        "{metrics}"
    );
}

/// Records the broker accepted can be larger than librdkafka's default
/// producer limit (1,000,000 bytes) once the dead letter's headers are
/// added: 1 MB payloads that fail are dead-lettered whole, and every
/// partition is committed to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_dead_lettered_whole() {
    const BIG: usize = 1_000_000;
    let (topic, group, parts, dlq) = ("large", "g-large", 4, "large.dlq");
    let cluster = cluster(topic, parts);
    cluster.create_topic(dlq, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let producer: kconc_runtime::rdkafka::producer::BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let big = vec![b'x'; BIG];
    for i in 0..400 {
        let partition = i % parts;
        let small = i.to_string();
        let payload: &[u8] = if i % 100 == 50 { &big } else { small.as_bytes() };
        let key = format!("k{i}");
        let record = kconc_runtime::rdkafka::producer::BaseRecord::to(topic)
            .key(&key)
            .payload(payload)
            .partition(partition);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    kconc_runtime::rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();

    let ends = end_offsets(&bootstrap, topic, parts);
    let sub = Subscriber::new("large", [topic], group, |m: Message| async move {
        if m.payload().is_some_and(|p| p.len() >= BIG) {
            return Err("too much to take in");
        }
        Ok(())
    })
    .dead_letter(dlq)
    .commit_interval(Duration::from_millis(50));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("committed to the ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    let stats = app.stats("large").unwrap();
    app.shutdown().await;
    assert_eq!((stats.dead_lettered, stats.dead_letter_failures), (4, 0), "{stats:?}");
    let letters = read_topic(&bootstrap, dlq, 4);
    assert_eq!(letters.len(), 4);
    assert!(letters
        .iter()
        .all(|l| l.payload.as_ref().is_some_and(|p| p.len() == BIG)));
}

/// A record batch librdkafka cannot read (its attributes say gzip, its
/// records are not) between good records: librdkafka reports it at its
/// first offset (3) and fetches it again and again. Under each policy it
/// is a failed message at that offset, counted: `skip` commits past the
/// batch (offsets 3 to 5) and handles what follows; `dead_letter` first
/// produces a dead letter saying where and why; `stop` stops the partition
/// there. Before, the partition stalled at 3 with a warning every 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_batch_goes_through_the_error_policy() {
    for policy in ["skip", "dead_letter", "stop"] {
        let topic = format!("unreadable-{policy}");
        let (group, dlq) = (format!("g-{topic}"), format!("{topic}.dlq"));
        let cluster = cluster(&topic, 1);
        cluster.create_topic(&dlq, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, &topic, 1, 3, 1);
        assert_eq!(produce_unreadable_batch(&bootstrap, &topic, 0, 3), 3);
        let ends = produce(&bootstrap, &topic, 1, 3, 1);
        assert_eq!(ends, [9]);
        let rec = Recorder::new();
        let r = rec.clone();
        let sub = Subscriber::new("unreadable", [topic.as_str()], group.as_str(), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
            }
        })
        .commit_interval(Duration::from_millis(50));
        let sub = match policy {
            "skip" => sub,
            "dead_letter" => sub.dead_letter(dlq.as_str()),
            _ => sub.on_error(OnError::Stop),
        };
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        let expected = if policy == "stop" { 3 } else { 9 };
        wait_for(&format!("{policy}: committed to {expected}"), DEADLINE, || {
            committed(&bootstrap, &group, &topic, 1) == [Some(expected)]
                && (policy != "stop"
                    || !app
                        .stats_handle("unreadable")
                        .expect("a subscriber of that name")
                        .stopped_partitions()
                        .is_empty())
        })
        .await;
        let stats = app.stats("unreadable").unwrap();
        let stopped = app
            .stats_handle("unreadable")
            .expect("a subscriber of that name")
            .stopped_partitions();
        let metrics = app.metrics_text().unwrap();
        app.shutdown().await;
        let handled: Vec<i64> = rec.by_partition().remove(&0).unwrap_or_default();
        let expected_handled: Vec<i64> = if policy == "stop" {
            vec![0, 1, 2]
        } else {
            vec![0, 1, 2, 6, 7, 8]
        };
        assert_eq!(handled, expected_handled, "{policy}");
        assert_eq!(stats.records_unreadable, 1, "{policy}: {stats:?}");
        assert!(
            metrics.contains("kconc_records_unreadable_total{subscriber=\"unreadable\"} 1"),
            "{metrics}"
        );
        match policy {
            "stop" => {
                assert_eq!(stopped.len(), 1);
                assert_eq!(stopped[0].offset, 3);
                assert!(stopped[0].reason.contains("cannot be read"), "{stopped:?}");
            }
            "dead_letter" => {
                let letters = read_topic(&bootstrap, &dlq, 1);
                assert_eq!(letters.len(), 1, "{letters:?}");
                assert_eq!(letters[0].header("kconc-original-offset"), "3");
                assert!(
                    letters[0].header("kconc-error").contains("cannot be read"),
                    "{letters:?}"
                );
                assert_eq!(stats.dead_lettered, 1);
            }
            _ => {}
        }
    }
}

/// Records compressed with each codec a Kafka producer may use are read:
/// a codec librdkafka was built without would make every batch unreadable
/// (before, kconc's librdkafka had no zstd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_compressed_with_every_codec_are_read() {
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("compressed-{codec}");
        let group = format!("g-{topic}");
        let cluster = cluster(&topic, 1);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let producer: kconc_runtime::rdkafka::producer::BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.codec", codec)
            .set("linger.ms", "20")
            .create()
            .unwrap();
        for i in 0..200 {
            let payload = format!("record {i} compressed with {codec}");
            let record = kconc_runtime::rdkafka::producer::BaseRecord::<(), _>::to(&topic).payload(&payload);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        kconc_runtime::rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
        let rec = Recorder::new();
        let r = rec.clone();
        let sub = Subscriber::new("compressed", [topic.as_str()], group.as_str(), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
            }
        });
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        wait_for(&format!("{codec}: all handled"), DEADLINE, || rec.finished() >= 200).await;
        let stats = app.stats("compressed").unwrap();
        app.shutdown().await;
        assert_eq!(stats.records_unreadable, 0, "{codec}: {stats:?}");
        assert_all_handled(&rec.counts(), &[200]);
    }
}

/// Moving past a long unreadable batch (review N8): its end is searched for
/// by doubling, then halving, the distance the fetch is moved, so a batch
/// of 2,000 records costs about 2 log2 2,000 (22) fetches instead of 2,000,
/// and every readable record after it is still handled, in both policies
/// that move past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_unreadable_batch_is_passed_in_a_few_fetches() {
    for policy in ["skip", "dead_letter"] {
        let topic = format!("unreadable-long-{policy}");
        let (group, dlq) = (format!("g-{topic}"), format!("{topic}.dlq"));
        let cluster = cluster(&topic, 1);
        cluster.create_topic(&dlq, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, &topic, 1, 3, 1);
        assert_eq!(produce_unreadable_batch(&bootstrap, &topic, 0, 2_000), 3);
        let ends = produce(&bootstrap, &topic, 1, 5, 1);
        assert_eq!(ends, [2_008]);
        let rec = Recorder::new();
        let r = rec.clone();
        let sub = Subscriber::new("long", [topic.as_str()], group.as_str(), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
            }
        });
        let sub = match policy {
            "skip" => sub,
            _ => sub.dead_letter(dlq.as_str()),
        };
        let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
        wait_for(&format!("{policy}: committed to the end"), DEADLINE, || {
            committed(&bootstrap, &group, &topic, 1) == all_committed(&ends)
        })
        .await;
        let stats = app.stats("long").unwrap();
        app.shutdown().await;
        let handled: Vec<i64> = rec.by_partition().remove(&0).unwrap_or_default();
        assert_eq!(handled, vec![0, 1, 2, 2_003, 2_004, 2_005, 2_006, 2_007], "{policy}");
        assert_eq!(stats.records_unreadable, 1, "{policy}: {stats:?}");
        assert!(
            stats.unreadable_fetch_moves <= 24,
            "{policy}: {} fetch moves for a batch of 2,000",
            stats.unreadable_fetch_moves
        );
    }
}

//! The `#[subscriber]` path end to end: functions registered by the macro are
//! found by `App::from_registry`, selected by name, run against the embedded
//! cluster, and their attribute settings reach the runtime.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kconc_runtime::{subscriber, App, Message};

static SINGLE: AtomicUsize = AtomicUsize::new(0);
static MULTI: AtomicUsize = AtomicUsize::new(0);
static MULTI_MAX: AtomicUsize = AtomicUsize::new(0);
static MULTI_NOW: AtomicUsize = AtomicUsize::new(0);

#[subscriber(topic = "reg-single", group = "reg-single")]
async fn single(_msg: Message) -> Result<(), std::io::Error> {
    SINGLE.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[subscriber(
    topics = ["reg-a", "reg-b"],
    group = "reg-multi",
    concurrency = 3,
    commit_batch_size = 10,
    commit_interval = "100ms",
    shutdown_timeout = "5s",
    name = "multi"
)]
async fn multi_topic(_msg: Message) {
    let now = MULTI_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    MULTI_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2)).await;
    MULTI_NOW.fetch_sub(1, Ordering::SeqCst);
    MULTI.fetch_add(1, Ordering::SeqCst);
}

/// Every option of the attribute, none at its default.
#[subscriber(
    topic = "reg-every",
    group = "reg-every",
    name = "every_option",
    concurrency = 7,
    ordering = "key",
    first_poll = "auto",
    max_buffered = 33,
    max_uncommitted = 444,
    handler_timeout = "5s",
    commit_batch_size = 55,
    commit_interval = "250ms",
    shutdown_timeout = "3s",
    revoke_timeout = "4s",
    retries = 2,
    backoff = "20ms",
    max_backoff = "2s",
    dead_letter = "reg-every.dlq"
)]
async fn every_option(_msg: Message) {}

/// The attribute expands to calls of the runtime's builder: every option
/// it takes reaches the subscriber.
#[test]
fn every_attribute_option_reaches_the_subscriber() {
    let app = App::from_registry();
    let sub = app.subscribers().find(|s| s.name() == "every_option").unwrap();
    let seen = format!("{sub:?}");
    for expected in [
        "concurrency: 7",
        "ordering: Key",
        "first_poll: Auto",
        "max_buffered: 33",
        "max_uncommitted: 444",
        "handler_timeout: Some(5s)",
        "commit_batch_size: 55",
        "commit_interval: 250ms",
        "shutdown_timeout: 3s",
        "revoke_timeout: 4s",
        "retries: 2",
        "backoff: 20ms",
        "max_backoff: 2s",
        "DeadLetter(\"reg-every.dlq\")",
    ] {
        assert!(seen.contains(expected), "{expected} missing from {seen}");
    }
}

#[test]
fn registry_lists_every_subscriber_with_its_attribute_settings() {
    let app = App::from_registry();
    let names: Vec<&str> = app.subscribers().map(|s| s.name()).collect();
    assert!(
        names.contains(&"registered::single"),
        "default name is the function path: {names:?}"
    );
    assert!(names.contains(&"multi"), "{names:?}");
    let multi = app.subscribers().find(|s| s.name() == "multi").unwrap();
    assert_eq!(multi.topics(), ["reg-a", "reg-b"]);
    assert_eq!(multi.group(), "reg-multi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_subscriber_consumes_and_commits() {
    let cluster = cluster("reg-single", 2);
    let ends = produce(cluster.bootstrap_servers(), "reg-single", 2, 200, 10);
    let app = App::from_registry()
        .brokers(cluster.bootstrap_servers())
        .only(["registered::single"])
        .start()
        .unwrap();
    wait_for("200 handled", Duration::from_secs(60), || {
        SINGLE.load(Ordering::SeqCst) >= 200
    })
    .await;
    app.shutdown().await;
    assert_eq!(SINGLE.load(Ordering::SeqCst), 200);
    assert_eq!(
        committed(cluster.bootstrap_servers(), "reg-single", "reg-single", 2),
        all_committed(&ends)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_settings_reach_the_runtime_for_several_topics() {
    let cluster = cluster("reg-a", 2);
    cluster.create_topic("reg-b", 2).unwrap();
    let ends_a = produce(cluster.bootstrap_servers(), "reg-a", 2, 150, 10);
    let ends_b = produce(cluster.bootstrap_servers(), "reg-b", 2, 150, 10);
    let app = App::from_registry()
        .brokers(cluster.bootstrap_servers())
        .only(["multi"])
        .start()
        .unwrap();
    wait_for("300 handled", Duration::from_secs(60), || {
        MULTI.load(Ordering::SeqCst) >= 300
    })
    .await;
    app.shutdown().await;
    assert!(MULTI_MAX.load(Ordering::SeqCst) <= 3, "concurrency = 3 was not applied");
    for (topic, ends) in [("reg-a", ends_a), ("reg-b", ends_b)] {
        assert_eq!(
            committed(cluster.bootstrap_servers(), "reg-multi", topic, 2),
            all_committed(&ends),
            "{topic}"
        );
    }
}

#[tokio::test]
async fn unknown_only_name_fails_at_start_naming_it() {
    let err = App::from_registry()
        .brokers("localhost:1")
        .only(["nope"])
        .start()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`nope`") && text.contains("multi"), "{text}");
}

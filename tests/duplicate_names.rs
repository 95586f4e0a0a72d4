//! Two subscribers with one name are refused before anything starts, the
//! error naming both functions and where they are: their metrics, `--only`,
//! `--set` and `Running::stats` would otherwise mix them up. (Its own test
//! binary: the registry is the whole program's.)

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kconc_runtime::{subscriber, App, Message, Subscriber};

#[subscriber(topic = "orders", group = "billing", name = "billing")]
async fn bill(_msg: Message) {}

#[subscriber(topic = "refunds", group = "refunds", name = "billing")]
async fn refund(_msg: Message) {}

#[tokio::test]
async fn two_subscribers_with_one_name_are_refused_naming_both_functions() {
    let app = || App::from_registry().brokers("embedded");
    let listed = app().listing().unwrap_err().to_string();
    let started = app().start().unwrap_err().to_string();
    assert_eq!(listed, started, "--list and a run refuse alike");
    assert!(started.contains("two subscribers are named `billing`"), "{started}");
    for function in ["duplicate_names::bill", "duplicate_names::refund"] {
        assert!(started.contains(function), "{started}");
    }
    assert!(started.contains("tests/duplicate_names.rs:11"), "{started}");
    assert!(started.contains("tests/duplicate_names.rs:14"), "{started}");

    // Built in code, too.
    let code = App::new()
        .brokers("embedded")
        .subscriber(Subscriber::new("audit", ["a"], "a", |_m: Message| async {}))
        .subscriber(Subscriber::new("audit", ["b"], "b", |_m: Message| async {}));
    let err = code.start().unwrap_err().to_string();
    assert!(err.contains("two subscribers are named `audit`"), "{err}");
}

/// Two subscribers of one app in the same group that share a topic are
/// refused, naming both (review N6): the group would split the topic's
/// partitions between them, and each would see only some of its messages
/// while the others' were committed past it. Different groups, or one group
/// over different topics, are fine.
#[tokio::test]
async fn two_subscribers_of_one_group_sharing_a_topic_are_refused_naming_both() {
    let sub = |name: &str, topics: &[&str], group: &str| {
        Subscriber::new(name, topics.iter().copied(), group, |_m: Message| async {})
    };
    let err = App::new()
        .brokers("embedded")
        .subscriber(sub("audit", &["payments", "refunds"], "ledger"))
        .subscriber(sub("archive", &["refunds"], "ledger"))
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`audit` and `archive` are both in group `ledger` and both subscribe to `refunds`"),
        "{err}"
    );
    for (a, b) in [("ledger", "archive-group"), ("ledger", "ledger")] {
        let topics: &[&str] = if a == b { &["other"] } else { &["refunds"] };
        let app = App::new()
            .brokers("embedded")
            .subscriber(sub("audit", &["payments", "refunds"], a))
            .subscriber(sub("archive", topics, b))
            .start()
            .unwrap();
        app.shutdown().await;
    }
}

//! What kconc logs says what happened: a payload that cannot be decoded is
//! not called a handler failure, an error is logged with its causes, and a
//! shutdown that abandoned handlers does not say they drained. (Its own
//! test binary: it installs a global tracing subscriber that keeps every
//! event of kconc's.)

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use kconc_runtime::{subscriber, App, Json, Message, NonRetryable, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

/// One event: its level and its fields (`message` included).
type Event = (tracing::Level, BTreeMap<String, String>);

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !event.metadata().target().starts_with("kconc_runtime") {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut CollectFields(&mut fields));
        self.0.lock().unwrap().push((*event.metadata().level(), fields));
    }
}

/// Every kconc event since the test binary started.
fn events() -> Events {
    static EVENTS: OnceLock<Events> = OnceLock::new();
    EVENTS
        .get_or_init(|| {
            let events = Events::default();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with(events.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            events
        })
        .clone()
}

impl Events {
    /// How many events there are now.
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The events since the first `from`, at INFO or above, whose message
    /// contains `text`.
    fn said(&self, from: usize, text: &str) -> Vec<Event> {
        let all = self.0.lock().unwrap();
        all[from..]
            .iter()
            .filter(|(level, f)| *level <= tracing::Level::INFO && f["message"].contains(text))
            .cloned()
            .collect()
    }

    /// The events since the first `from` at WARN or above.
    fn loud(&self, from: usize) -> Vec<Event> {
        let all = self.0.lock().unwrap();
        all[from..]
            .iter()
            .filter(|(level, _)| *level <= tracing::Level::WARN)
            .cloned()
            .collect()
    }

    /// The events of subscriber `name`.
    fn of(&self, name: &str) -> Vec<Event> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|(_, f)| f.get("subscriber").map(String::as_str) == Some(name))
            .cloned()
            .collect()
    }
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    id: u64,
    amount: i64,
}

/// An error caused by another, as a thiserror `#[source]` makes it.
#[derive(Debug)]
struct Invalid {
    id: u64,
    source: NonRetryable,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "order {} is invalid", self.id)
    }
}

impl std::error::Error for Invalid {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[subscriber(topic = "logs-orders", group = "logs-orders", name = "billing")]
async fn bill(order: Json<Order>) -> Result<(), Invalid> {
    if order.amount < 0 {
        return Err(Invalid {
            id: order.id,
            source: NonRetryable::new(format!("negative amount {}", order.amount)),
        });
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_logged_as_what_failed_with_its_causes() {
    let events = events();
    let topic = "logs-orders";
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let end = produce_records(
        &bootstrap,
        topic,
        0,
        &[
            ("a", "{not json"),
            ("b", r#"{"id":13,"amount":-5}"#),
            ("c", r#"{"id":14,"amount":5}"#),
        ],
    );
    let app = App::from_registry()
        .brokers(&bootstrap)
        .only(["billing"])
        .start_in_test_mode()
        .unwrap();
    wait_for("everything committed", DEADLINE, || {
        committed(&bootstrap, topic, topic, 1) == [Some(end)]
    })
    .await;
    app.shutdown().await;
    let logged: Vec<Event> = events
        .of("billing")
        .into_iter()
        .filter(|(level, _)| *level <= tracing::Level::INFO)
        .collect();
    let failures: Vec<&Event> = logged.iter().filter(|(_, f)| f.contains_key("error")).collect();
    assert_eq!(failures.len(), 2, "{logged:#?}");
    let (_, undecodable) = failures.iter().find(|(_, f)| f["offset"] == "0").unwrap();
    assert_eq!(
        undecodable["message"],
        "could not decode the message (its handler did not run); skipped (the message counts as finished)",
        "{undecodable:?}"
    );
    assert!(
        undecodable["error"].contains("not valid JSON") && undecodable["error"].contains("Order"),
        "{undecodable:?}"
    );
    let (_, failed) = failures.iter().find(|(_, f)| f["offset"] == "1").unwrap();
    assert_eq!(
        failed["message"], "handler failed; skipped (the message counts as finished)",
        "{failed:?}"
    );
    assert_eq!(failed["error"], "order 13 is invalid: negative amount -5");
}

/// A shutdown whose timeout drops a handler says how many it abandoned,
/// and not that the handlers drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_abandons_handlers_says_so() {
    let events = events();
    let (topic, group) = ("logs-stuck", "g-logs-stuck");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, 1, 1, 1);
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("stuck", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            std::future::pending::<()>().await;
        }
    })
    .shutdown_timeout(Duration::from_secs(1));
    let app = test_app(&bootstrap).subscriber(sub).start_in_test_mode().unwrap();
    wait_for("the handler runs", DEADLINE, || {
        rec.started.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    app.shutdown().await;
    let said: Vec<String> = events
        .of("stuck")
        .into_iter()
        .map(|(_, f)| f["message"].clone())
        .collect();
    assert!(
        said.iter()
            .any(|m| m.starts_with("shutdown: 1 handler(s) abandoned at the shutdown timeout")),
        "{said:#?}"
    );
    assert!(!said.iter().any(|m| m.contains("drained")), "{said:#?}");
}

/// A cluster no broker of which answers is said once (not once per
/// subscriber and retry): one error naming the brokers and the reason, then
/// nothing while it lasts (the reminder comes after a minute); readiness
/// and `kconc_cluster_reachable` say so; one line when it answers again;
/// and nothing once the app shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_said_once_and_so_is_its_return() {
    let events = events();
    let topic = "logs-unreachable";
    let cluster = cluster(topic, 2);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let mock = cluster.mock().unwrap();
    mock.broker_down(1).unwrap();
    let from = events.len();
    let mut app = test_app(&bootstrap).wait_for_topics(true);
    for name in ["unreach-a", "unreach-b"] {
        app = app.subscriber(Subscriber::new(name, [topic], name, |_m: Message| async {}));
    }
    let app = app.start_in_test_mode().unwrap();
    wait_for("readiness names the unreachable cluster", DEADLINE, || {
        let health = app.health();
        !health.ready
            && health.subscribers.iter().all(|s| {
                s.cluster_unreachable_for.is_some()
                    && s.problems
                        .iter()
                        .any(|p| p.starts_with(&format!("cannot reach the cluster at {bootstrap}")))
            })
    })
    .await;
    let metrics = app.metrics_text().unwrap();
    assert!(
        metrics.contains("kconc_cluster_reachable{subscriber=\"unreach-a\"} 0"),
        "{metrics}"
    );
    // What used to flood the log: every refused connection and every
    // "all brokers are down" of both consumers (now at debug level).
    wait_for("50 connection failures reported by librdkafka", DEADLINE, || {
        let all = events.0.lock().unwrap();
        all[from..]
            .iter()
            .filter(|(_, f)| f["message"].contains("brokers are down") || f["message"].contains("Connect to"))
            .count()
            >= 50
    })
    .await;
    // Other tests of this binary run meanwhile: only this app's lines count.
    let mine = |(_, f): &Event| {
        f.get("subscriber").is_some_and(|s| s.starts_with("unreach-"))
            || f.get("brokers") == Some(&bootstrap)
            || f["message"].contains(&bootstrap)
    };
    let loud: Vec<Event> = events.loud(from).into_iter().filter(|e| mine(e)).collect();
    assert_eq!(loud.len(), 1, "one line while the cluster is unreachable: {loud:#?}");
    let (level, line) = &loud[0];
    assert_eq!(*level, tracing::Level::ERROR);
    assert!(
        line["message"].starts_with("cannot reach the Kafka cluster"),
        "{line:?}"
    );
    assert_eq!(line["brokers"], bootstrap);
    assert!(line["reason"].contains("Connect to"), "{line:?}");

    mock.broker_up(1).unwrap();
    wait_for("ready once the cluster answers", DEADLINE, || app.health().ready).await;
    assert_eq!(
        events.said(from, "reachable again").iter().filter(|e| mine(e)).count(),
        1
    );
    let metrics = app.metrics_text().unwrap();
    assert!(
        metrics.contains("kconc_cluster_reachable{subscriber=\"unreach-a\"} 1"),
        "{metrics}"
    );

    // Down again, then a shutdown: nothing is said after it begins.
    let again = events.len();
    mock.broker_down(1).unwrap();
    wait_for("the second outage is said", DEADLINE, || {
        !events.said(again, "cannot reach the Kafka cluster").is_empty()
    })
    .await;
    let shutdown = events.len();
    app.shutdown().await;
    let after: Vec<Event> = events
        .loud(shutdown)
        .into_iter()
        .filter(|e| mine(e) && (e.1["message"].contains("librdkafka") || e.1["message"].contains("reach")))
        .collect();
    assert!(after.is_empty(), "said after the shutdown began: {after:#?}");
}

/// No ERROR at a clean shutdown (a new user's trial of a6d8e9a, bug 4): a
/// subscriber's reply producer that outlives the embedded cluster (a
/// handler still holds its context) reports the cluster's brokers down
/// through kconc's cluster watch, which says nothing loud once the app has
/// shut down. At a6d8e9a the producer used rdkafka's default context, which
/// logged `Global error: AllBrokersDown` as an ERROR (through `log`, which
/// this test's subscriber does not read: it fails then because the watch
/// never hears of it, and with an ERROR of its own text when the producer's
/// errors are logged loudly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_outlives_the_embedded_cluster_says_nothing_loud() {
    let events = events();
    let topic = "logs-outlived";
    let held: Arc<Mutex<Option<kconc_runtime::Context>>> = Arc::default();
    let h = held.clone();
    let handler = kconc_runtime::Handler::with_context(move |_m: Message, cx| {
        h.lock().unwrap().replace(cx);
        async {}
    });
    let sub = Subscriber::from_handler("outlived", [topic], "outlived", handler).reply("logs-outlived.out");
    let app = App::new().brokers("embedded").subscriber(sub).start().unwrap();
    let producer = kconc_runtime::testing::TestProducer::new(app.bootstrap_servers()).unwrap();
    producer.send(topic, Some(0), None, b"x").unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(producer);
    wait_for("a message handled", DEADLINE, || held.lock().unwrap().is_some()).await;
    let from = events.len();
    drop(app.shutdown().await);
    let cx = held.lock().unwrap().take().unwrap();
    let _alive = cx.producer().unwrap();
    let down = |e: &Event| e.1.get("message").is_some_and(|m| m.contains("brokers are down"));
    wait_for("the outliving producer found the cluster gone", DEADLINE, || {
        events.0.lock().unwrap()[from..].iter().any(down)
    })
    .await;
    let loud: Vec<Event> = events
        .loud(from)
        .into_iter()
        .filter(|e| e.1["message"].contains("librdkafka") || down(e))
        .collect();
    assert!(loud.is_empty(), "said loudly after the shutdown: {loud:#?}");
}

/// A subscribed topic that does not exist fails start-up by default,
/// naming it; with `wait_for_topics` the app starts, and readiness, the
/// metrics and the log name the topic until it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_fails_start_up_or_is_named_until_it_exists() {
    let events = events();
    let (topic, ghost) = ("logs-present", "logs-ghost");
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = || Subscriber::new("ghostly", [topic, ghost], "ghostly", |_m: Message| async {});
    let err = test_app(&bootstrap).subscriber(sub()).start().unwrap_err().to_string();
    assert!(
        err.contains("topic `logs-ghost` (subscribed by ghostly) does not exist") && err.contains("--wait-for-topics"),
        "{err}"
    );

    let from = events.len();
    let app = test_app(&bootstrap)
        .wait_for_topics(true)
        .subscriber(sub())
        .start_in_test_mode()
        .unwrap();
    wait_for("readiness names the missing topic", DEADLINE, || {
        let health = app.health();
        let s = &health.subscribers[0];
        !health.ready
            && s.missing_topics == [ghost]
            && s.problems
                .iter()
                .any(|p| p.contains("topic `logs-ghost` does not exist"))
    })
    .await;
    assert!(app
        .metrics_text()
        .unwrap()
        .contains("kconc_missing_topics{subscriber=\"ghostly\"} 1"));
    assert_eq!(events.said(from, "`logs-ghost` does not exist").len(), 1);
    cluster.create_topic(ghost, 1).unwrap();
    wait_for("ready once the topic exists", DEADLINE, || {
        let health = app.health();
        health.ready && health.subscribers[0].missing_topics.is_empty()
    })
    .await;
    assert_eq!(events.said(from, "`logs-ghost` exists now").len(), 1);
    app.shutdown().await;
}

/// The topics a subscriber replies and dead-letters to are checked at
/// start-up like the subscribed ones, and every missing topic is named at
/// once, with what uses it (a new user's trial of a6d8e9a, bug 3: a missing
/// reply topic let the app start ready, and each message then failed at its
/// reply). With `wait_for_topics` they are waited for like subscribed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_reply_and_dead_letter_topics_are_named_at_start_up_all_at_once() {
    let topic = "logs-payments";
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = || {
        Subscriber::new("payments", [topic, "logs-refunds"], "payments", |_m: Message| async {})
            .reply("logs-payments.done")
            .dead_letter("logs-payments.dlq")
    };
    let err = test_app(&bootstrap).subscriber(sub()).start().unwrap_err().to_string();
    for named in [
        "`logs-refunds` (subscribed by payments)",
        "`logs-payments.done` (reply topic of payments)",
        "`logs-payments.dlq` (dead-letter topic of payments)",
    ] {
        assert!(err.contains(named), "{err}");
    }
    assert!(
        err.contains("these topics do not exist") && !err.contains("`logs-payments` ("),
        "{err}"
    );
    cluster.create_topic("logs-refunds", 1).unwrap();
    let app = test_app(&bootstrap)
        .wait_for_topics(true)
        .subscriber(sub())
        .start_in_test_mode()
        .unwrap();
    wait_for(
        "readiness names the missing reply and dead-letter topics",
        DEADLINE,
        || {
            let health = app.health();
            !health.ready && health.subscribers[0].missing_topics == ["logs-payments.dlq", "logs-payments.done"]
        },
    )
    .await;
    cluster.create_topic("logs-payments.done", 1).unwrap();
    cluster.create_topic("logs-payments.dlq", 1).unwrap();
    wait_for("ready once they exist", DEADLINE, || app.health().ready).await;
    app.shutdown().await;
}

/// A librdkafka warning that every subscriber's client repeats (here a
/// configuration warning) is logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_every_client_repeats_is_logged_once() {
    let events = events();
    let topic = "logs-confwarn";
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let from = events.len();
    let names = ["confwarn-a", "confwarn-b", "confwarn-c"];
    let mut app = test_app(&bootstrap).property("sasl.mechanism", "PLAIN");
    for name in names {
        app = app.subscriber(Subscriber::new(name, [topic], name, |_m: Message| async {}));
    }
    let app = app.start_in_test_mode().unwrap();
    wait_for("every subscriber is ready", DEADLINE, || app.health().ready).await;
    app.shutdown().await;
    let all = events.0.lock().unwrap()[from..].to_vec();
    let repeated: Vec<&Event> = all
        .iter()
        .filter(|(_, f)| f["message"].contains("sasl.mechanism"))
        .collect();
    // Each client said it (else this test could not fail)...
    let clients: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|(_, f)| f["message"].contains("sasl.mechanism") || f["message"].contains("CONFWARN"))
        .filter_map(|(_, f)| f.get("subscriber").map(String::as_str))
        .collect();
    let loud: Vec<&&Event> = repeated
        .iter()
        .filter(|(level, _)| *level <= tracing::Level::WARN)
        .collect();
    assert_eq!(loud.len(), 1, "logged once: {repeated:#?} (clients: {clients:?})");
}

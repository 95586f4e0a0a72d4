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
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

const DEADLINE: Duration = Duration::from_secs(60);

/// One event: its level and its fields (`message` included).
type Event = (tracing::Level, BTreeMap<String, String>);

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

struct Collect<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !event.metadata().target().starts_with("kconc_runtime") {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Collect(&mut fields));
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
                .with(tracing_subscriber::filter::LevelFilter::INFO)
                .with(events.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            events
        })
        .clone()
}

impl Events {
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
    let logged = events.of("billing");
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

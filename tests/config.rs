//! Bad configuration fails at start-up with an error naming the setting, and
//! secrets never appear in it.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kconc_runtime::{App, Error, Message, Subscriber};

fn sub() -> Subscriber {
    Subscriber::new("cfg", ["t"], "g", |_m: Message| async {})
}

fn start_err(app: App) -> String {
    match app.start() {
        Ok(_) => panic!("start should have failed"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn invalid_librdkafka_property_names_the_property() {
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .property("session.timeout.ms", "soon")
            .subscriber(sub()),
    );
    assert!(text.contains("session.timeout.ms"), "{text}");
}

#[tokio::test]
async fn unknown_librdkafka_property_names_the_property() {
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .property("fetch.wait.max.msec", "10")
            .subscriber(sub()),
    );
    assert!(text.contains("fetch.wait.max.msec"), "{text}");
}

#[tokio::test]
async fn invalid_subscriber_settings_name_the_setting() {
    for (s, setting) in [
        (sub().concurrency(0), "concurrency"),
        (sub().commit_batch_size(0), "commit_batch_size"),
        (sub().commit_interval(Duration::ZERO), "commit_interval"),
        (
            Subscriber::new("cfg", Vec::<String>::new(), "g", |_m: Message| async {}),
            "topic",
        ),
        (Subscriber::new("cfg", ["t"], "", |_m: Message| async {}), "group"),
    ] {
        let text = start_err(App::new().brokers("localhost:1").subscriber(s));
        assert!(
            text.contains(&format!("`{setting}`")),
            "expected `{setting}` in: {text}"
        );
    }
}

#[tokio::test]
async fn empty_brokers_and_no_subscribers_are_refused() {
    assert!(start_err(App::new().brokers(" ").subscriber(sub())).contains("brokers"));
    assert!(start_err(App::new().brokers("localhost:1")).contains("no subscribers"));
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(App::new().subscriber(sub()).start(), Err(Error::NoRuntime)));
}

#[tokio::test]
async fn a_secret_value_is_never_echoed_in_an_error() {
    // librdkafka quotes an invalid value in its message; for a secret
    // property kconc reduces the message to the property's name.
    let secret = "hunter2-very-secret";
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .property("sasl.mechanism", "PLAIN")
            .property("ssl.key.password", secret)
            .property("sasl.password", secret)
            .property("session.timeout.ms", "not-a-number")
            .subscriber(sub()),
    );
    assert!(!text.contains(secret), "{text}");
    let debug = format!("{:?}", App::new().property("sasl.password", secret));
    assert!(!debug.contains(secret), "App's Debug output leaks a secret: {debug}");
}

//! Run-time configuration: the layers (code < file < environment < flags),
//! the group prefix reaching the consumer, `--list`, and bad configuration
//! failing at start-up with an error naming the setting, secrets never
//! appearing in it. The environment is passed in, never set: tests in one
//! binary share the process environment.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, committed, produce, test_app, wait_for};
use kconc_runtime::Cli;
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
        (sub().revoke_timeout(Duration::ZERO), "revoke_timeout"),
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

fn cli(args: &[&str]) -> Cli {
    Cli::try_from_iter(std::iter::once("svc").chain(args.iter().copied())).unwrap()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A properties file with `text` in a fresh temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kconc-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
async fn a_malformed_config_file_fails_at_start_with_file_and_line_without_the_secret() {
    let file = TempFile::new(
        "bad.properties",
        "# credentials\nsasl.username=svc\nsasl.password hunter2-very-secret\n",
    );
    let app = App::new()
        .brokers("localhost:1")
        .subscriber(sub())
        .configure_with_env(&cli(&["--config", file.path()]), Vec::new());
    let text = start_err(app);
    assert!(text.contains(&format!("{}:3:", file.path())), "{text}");
    assert!(text.contains("KEY=VALUE"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_missing_config_file_fails_naming_the_path() {
    let app = App::new()
        .brokers("localhost:1")
        .subscriber(sub())
        .configure_with_env(&cli(&["--config", "/nonexistent/kconc.properties"]), Vec::new());
    let text = start_err(app);
    assert!(text.contains("/nonexistent/kconc.properties"), "{text}");
}

#[tokio::test]
async fn an_unknown_kconc_variable_fails_at_start_naming_the_one_meant() {
    let env = kv(&[("KCONC_BROKER", "b:9092"), ("KCONC_RDKAFKA_SASL_PASSWORD", "hunter2")]);
    let app = App::new()
        .brokers("localhost:1")
        .subscriber(sub())
        .configure_with_env(&cli(&[]), env);
    let text = start_err(app);
    assert!(
        text.contains("KCONC_BROKER") && text.contains("did you mean KCONC_BROKERS"),
        "{text}"
    );
    assert!(!text.contains("b:9092") && !text.contains("hunter2"), "{text}");
    let app = App::new()
        .brokers("localhost:1")
        .subscriber(sub())
        .configure_with_env(&cli(&[]), kv(&[("KCONC_RDKAFKA_", "x")]));
    assert!(start_err(app).contains("KCONC_RDKAFKA_"));
}

#[test]
fn list_shows_every_subscriber_with_its_prefixed_group_and_no_property() {
    let app = App::new()
        .property("sasl.password", "hunter2")
        .subscriber(
            Subscriber::new("billing", ["orders", "refunds"], "billing", |_m: Message| async {}).concurrency(20),
        )
        .subscriber(
            Subscriber::new("audit", ["orders"], "audit-group", |_m: Message| async {})
                .property("sasl.password", "hunter2")
                .handler_timeout(Duration::from_secs(2))
                .reply("audit.out"),
        )
        .configure_with_env(&cli(&["--group-prefix", "staging-"]), Vec::new());
    let table = app.listing().unwrap();
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines,
        vec![
            vec![
                "NAME",
                "TOPICS",
                "GROUP",
                "CONCURRENCY",
                "ORDERING",
                "RETRIES",
                "ON_ERROR",
                "HANDLER_TIMEOUT",
                "REPLY"
            ],
            vec![
                "billing",
                "orders,refunds",
                "staging-billing",
                "20",
                "unordered",
                "0",
                "skip",
                "none",
                "-"
            ],
            vec![
                "audit",
                "orders",
                "staging-audit-group",
                "10",
                "unordered",
                "0",
                "skip",
                "2s",
                "audit.out"
            ],
        ],
        "{table}"
    );
    assert!(!table.contains("hunter2"), "{table}");
    let only = App::new()
        .subscriber(Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {}))
        .subscriber(Subscriber::new("audit", ["orders"], "audit", |_m: Message| async {}))
        .configure_with_env(&cli(&["--only", "audit"]), Vec::new())
        .listing()
        .unwrap();
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(only.contains("audit") && !only.contains("billing"), "{only}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_prefix_reaches_the_consumer_and_its_commits() {
    let (topic, group, n) = ("prefixed", "g-prefix", 5);
    let cluster = cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap, topic, 1, n, 1);
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let sub = Subscriber::new("prefixed", [topic], group, move |_m: Message| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
        }
    })
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap)
        .group_prefix("staging-")
        .subscriber(sub)
        .start()
        .unwrap();
    wait_for("all messages handled", Duration::from_secs(60), || {
        handled.load(Ordering::SeqCst) >= n
    })
    .await;
    app.shutdown().await;
    assert_eq!(
        committed(&bootstrap, &format!("staging-{group}"), topic, 1),
        vec![Some(ends[0])],
        "commits land under the prefixed group"
    );
    assert_eq!(
        committed(&bootstrap, group, topic, 1),
        vec![None],
        "nothing under the bare group"
    );
}

#[tokio::test]
async fn flag_properties_override_the_subscribers_own_and_are_checked() {
    // A subscriber's property is code; a bad flag must still fail naming itself.
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .subscriber(sub().property("session.timeout.ms", "6000"))
            .configure_with_env(&cli(&["--property", "session.timeout.ms=soon"]), Vec::new()),
    );
    assert!(
        text.contains("--property") && text.contains("session.timeout.ms"),
        "{text}"
    );
}

#[test]
fn debug_output_of_configuration_never_shows_a_secret() {
    let secret = "hunter2-very-secret";
    let c = cli(&["--property", &format!("sasl.password={secret}")]);
    assert!(!format!("{c:?}").contains(secret));
    let app = App::new().configure_with_env(&c, kv(&[("KCONC_RDKAFKA_SSL_KEY_PASSWORD", secret)]));
    let debug = format!("{app:?}");
    assert!(!debug.contains(secret), "{debug}");
}

#[tokio::test]
async fn tls_and_sasl_scram_are_built_in() {
    // librdkafka is built with OpenSSL, so SASL_SSL with SCRAM (what managed
    // Kafka services ask for) passes librdkafka's own check at start-up.
    let running = App::new()
        .brokers("localhost:1")
        .property("security.protocol", "SASL_SSL")
        .property("sasl.mechanism", "SCRAM-SHA-512")
        .property("sasl.username", "u")
        .property("sasl.password", "p")
        .subscriber(sub())
        .start()
        .expect("SASL_SSL with SCRAM should be accepted");
    running.shutdown().await;
}

#[test]
fn listing_fails_on_bad_configuration_and_brokers_in_use_follow_the_layers() {
    let bad = App::new()
        .subscriber(sub())
        .configure_with_env(&cli(&["--list"]), kv(&[("KCONC_BROKRS", "b:9092")]));
    let err = bad.listing().unwrap_err().to_string();
    assert!(err.contains("KCONC_BROKRS"), "{err}");

    assert_eq!(App::new().brokers_in_use(), "localhost:9092");
    let file = TempFile::new("brokers.properties", "bootstrap.servers = file:9092\n");
    let from_file = App::new()
        .default_brokers("embedded")
        .configure_with_env(&cli(&["--config", file.path()]), Vec::new());
    assert_eq!(from_file.brokers_in_use(), "file:9092");
    // KCONC_BROKERS reaches the same field through clap, as --brokers does.
    let from_flag = App::new()
        .default_brokers("embedded")
        .configure_with_env(&cli(&["--config", file.path(), "--brokers", " flag:9092 "]), Vec::new());
    assert_eq!(from_flag.brokers_in_use(), "flag:9092");
    let table = App::new().subscriber(sub()).listing().unwrap();
    assert!(table.contains("cfg"), "{table}");
}

#[test]
fn set_overrides_subscriber_settings_and_names_a_bad_one() {
    let app = App::new()
        .subscriber(Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {}))
        .subscriber(Subscriber::new("audit", ["orders"], "audit", |_m: Message| async {}))
        .configure_with_env(
            &cli(&[
                "--set",
                "billing.concurrency=40",
                "--set",
                "billing.ordering=key",
                "--set",
                "*.retries=3",
                "--set",
                "audit.dead_letter=orders.dlq",
                // What it is now: accepted, as --help lists it.
                "--set",
                "audit.on_error=dead_letter",
            ]),
            Vec::new(),
        );
    let table = app.listing().unwrap();
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["billing", "orders", "billing", "40", "key", "3", "skip", "none", "-"],
            vec![
                "audit",
                "orders",
                "audit",
                "10",
                "unordered",
                "3",
                "dead_letter(orders.dlq)",
                "none",
                "-"
            ],
        ],
        "{table}"
    );
    for (set, expected) in [
        ("billing.retries=many", "`retries` takes a whole number"),
        ("billing.parallelism=4", "unknown setting `parallelism`"),
        ("biling.concurrency=4", "no subscriber is named `biling`"),
        ("billing.backoff=soon", "`backoff` takes a duration"),
        ("billing.ordering=random", "unknown ordering `random`"),
        ("billing.first_poll=inline", "unknown first_poll `inline`"),
        ("billing.max_uncommitted=lots", "`max_uncommitted` takes a whole number"),
        ("billing.handler_timeout=never", "`handler_timeout` takes a duration"),
        (
            "concurrency=4",
            "expected NAME.KEY=VALUE: `billing.concurrency=4`, `*.concurrency=4` for all",
        ),
        (
            "billing.reply=other",
            "`reply` is fixed by the code (`#[subscriber(reply = ..)]`",
        ),
        ("billing.topic=other", "`topic` is fixed by the code"),
        (
            "billing.retires=3",
            "unknown setting `retires`: did you mean `retries`?",
        ),
        (
            "billing.timeout=2s",
            "did you mean `handler_timeout`, `shutdown_timeout` or `revoke_timeout`?",
        ),
        (
            "billing.handler_timeout=1h",
            "takes a duration (a whole number and `ms`, `s` or `m`: `500ms`, `30s`, `1m`), or `none`, not `1h`",
        ),
        (
            "billing.on_error=dead_letter",
            "`on_error=dead_letter` needs a dead-letter topic: set `billing.dead_letter=TOPIC` instead",
        ),
        (
            "billing.on_error=retry",
            "`on_error` takes `skip`, `stop`, or `dead_letter` where",
        ),
    ] {
        let err = App::new()
            .subscriber(Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {}))
            .configure_with_env(&cli(&["--set", set]), Vec::new())
            .listing()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--set") && err.contains(expected), "{set}: {err}");
    }
}

#[tokio::test]
async fn a_set_value_out_of_range_fails_at_start_naming_the_setting() {
    let app = App::new()
        .brokers("localhost:1")
        .subscriber(sub())
        .configure_with_env(&cli(&["--set", "cfg.concurrency=0"]), Vec::new());
    assert!(start_err(app).contains("`concurrency` must be at least 1"));
}

/// Settings that would let librdkafka commit or skip behind kconc's back
/// are refused from every layer, naming the layer, whatever the spelling
/// of the property (`topic.` prefix, legacy alias, value case).
#[tokio::test]
async fn settings_that_would_commit_or_skip_behind_kconcs_back_are_refused_in_every_layer() {
    // Code: the application's properties, then a subscriber's.
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .property("enable.auto.commit", "true")
            .subscriber(sub()),
    );
    assert!(text.contains("App::property `enable.auto.commit`"), "{text}");
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .subscriber(sub().property("enable.auto.offset.store", "true")),
    );
    assert!(
        text.contains("subscriber `cfg`: Subscriber::property `enable.auto.offset.store`"),
        "{text}"
    );
    // The properties file, naming the line.
    let file = TempFile::new("auto.properties", "client.rack=r1\nenable.auto.commit = TRUE\n");
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .subscriber(sub())
            .configure_with_env(&cli(&["--config", file.path()]), Vec::new()),
    );
    assert!(
        text.contains(&format!("{}:2: `enable.auto.commit`", file.path())),
        "{text}"
    );
    // The environment, naming the variable.
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .subscriber(sub())
            .configure_with_env(&cli(&[]), kv(&[("KCONC_RDKAFKA_ENABLE_AUTO_OFFSET_STORE", "1")])),
    );
    assert!(
        text.contains("environment variable KCONC_RDKAFKA_ENABLE_AUTO_OFFSET_STORE"),
        "{text}"
    );
    // Flags, in every spelling.
    for (property, value) in [
        ("enable.auto.commit", "t"),
        ("auto.commit.enable", "true"),
        ("topic.auto.commit.enable", "true"),
        ("auto.offset.reset", "latest"),
        ("topic.auto.offset.reset", "largest"),
        ("auto.offset.reset", "error"),
        ("check.crcs", "true"),
        ("group.id", "other"),
    ] {
        let flag = format!("{property}={value}");
        let text = start_err(
            App::new()
                .brokers("localhost:1")
                .subscriber(sub())
                .configure_with_env(&cli(&["--property", &flag]), Vec::new()),
        );
        assert!(text.contains(&format!("--property: `{property}`")), "{flag}: {text}");
    }
}

/// The group protocol: `--group-protocol` (or `KCONC_GROUP_PROTOCOL`)
/// reaches every subscriber and `--set NAME.group_protocol` one; under
/// `consumer` a classic-only property fails the start, naming the
/// subscriber and what replaces it; a bad value names the flag's values;
/// `group.protocol` itself is refused as a property.
#[tokio::test]
async fn the_group_protocol_reaches_every_subscriber_and_refuses_classic_only_properties() {
    let two = || {
        App::new()
            .brokers("localhost:1")
            .subscriber(Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {}))
            .subscriber(Subscriber::new("audit", ["orders"], "audit", |_m: Message| async {}))
    };
    let text = start_err(two().configure_with_env(
        &cli(&["--group-protocol", "consumer", "--property", "session.timeout.ms=6000"]),
        Vec::new(),
    ));
    assert!(
        text.contains("subscriber `billing` (group_protocol = \"consumer\")")
            && text.contains("`session.timeout.ms`")
            && text.contains("group.consumer.session.timeout.ms"),
        "{text}"
    );
    // Per subscriber: billing back to classic, so audit is the one refused.
    let text = start_err(two().configure_with_env(
        &cli(&[
            "--group-protocol",
            "consumer",
            "--set",
            "billing.group_protocol=classic",
            "--property",
            "partition.assignment.strategy=range",
        ]),
        Vec::new(),
    ));
    assert!(
        text.contains("subscriber `audit`") && text.contains("group.remote.assignor"),
        "{text}"
    );
    // In code, app-wide, for subscribers added after it too.
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .group_protocol(kconc_runtime::GroupProtocol::Consumer)
            .property("heartbeat.interval.ms", "500")
            .subscriber(sub()),
    );
    assert!(text.contains("group.consumer.heartbeat.interval.ms"), "{text}");
    // Under classic the same properties are taken (the start goes past
    // the check, to the unreachable broker or further).
    let classic = two()
        .configure_with_env(&cli(&["--property", "session.timeout.ms=6000"]), Vec::new())
        .group_protocol(kconc_runtime::GroupProtocol::Classic)
        .start();
    if let Err(e) = classic {
        assert!(!e.to_string().contains("group_protocol"), "{e}");
    }
    // A bad value, and the raw property.
    let bad = Cli::try_from_iter(["svc", "--group-protocol", "eager"])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("use `classic` or `consumer`"), "{bad}");
    let text = start_err(
        App::new()
            .brokers("localhost:1")
            .subscriber(sub())
            .configure_with_env(&cli(&["--property", "group.protocol=consumer"]), Vec::new()),
    );
    assert!(text.contains("--group-protocol"), "{text}");
}

#[test]
fn set_reaches_the_new_settings() {
    let mut s = Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {});
    s.set("first_poll", "poll_thread").unwrap();
    assert_eq!(s.first_poll_mode(), kconc_runtime::FirstPoll::PollThread);
    for (key, value) in [
        ("max_uncommitted", "500"),
        ("handler_timeout", "30s"),
        ("handler_timeout", "none"),
        ("revoke_timeout", "2s"),
    ] {
        s.set(key, value).unwrap_or_else(|e| panic!("{key}={value}: {e}"));
    }
    let debug = format!("{s:?}");
    assert!(
        debug.contains("max_uncommitted: 500") && debug.contains("handler_timeout: None"),
        "{debug}"
    );
}

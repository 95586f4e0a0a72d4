//! Health, readiness and metrics over the HTTP endpoint (`App::http`, the
//! `--http` flag), against the embedded cluster with faults injected: before
//! the group is joined, once assigned, during a commit failure streak, with
//! a partition stopped by the error policy, and during shutdown. The
//! metrics are parsed as Prometheus text and checked against the run.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{HealthThresholds, Message, OnError, Subscriber};

const SECRET: &str = "hunter2-do-not-print";

async fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).await.map_or(0, |(s, _)| s)
}

/// Waits until `GET path` answers `code`; returns the body.
async fn wait_status(addr: SocketAddr, path: &str, code: u16, what: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some((s, body)) = get(addr, path).await {
            if s == code {
                return body;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {path} to answer {code}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
/// The text must be valid OpenMetrics (what it is served as).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let errors = openmetrics_errors(text);
    assert!(
        errors.is_empty(),
        "/metrics is not valid OpenMetrics: {errors:#?}\n{text}"
    );
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_follow_the_consumer() {
    let (topic, group, parts) = ("watched", "g-watched", 2);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let mock = cluster.mock().unwrap();
    // Before the group is joined: the only broker is down.
    mock.broker_down(1).unwrap();
    let slow = Arc::new(AtomicBool::new(false));
    let s = slow.clone();
    let sub = Subscriber::new("watched", [topic], group, move |m: Message| {
        let slow = s.load(Ordering::SeqCst);
        async move {
            if slow && m.offset() % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
    })
    .concurrency(8);
    let app = test_app(&bootstrap)
        .property("sasl.password", SECRET)
        .http("127.0.0.1:0")
        .health_thresholds(HealthThresholds {
            commit_failures_for: Duration::from_millis(300),
            ..HealthThresholds::default()
        })
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let addr = app.http_addr().unwrap();
    let (code, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "ready before joining: {body}");
    assert!(body.contains("has not joined"), "{body}");
    assert_eq!(status(addr, "/healthz").await, 200, "alive while waiting to join");

    mock.broker_up(1).unwrap();
    wait_status(addr, "/readyz", 200, "ready once assigned").await;
    let ends = produce(&bootstrap, topic, parts, 1_000, 10);
    wait_for("committed == ends", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;
    // The metrics match the run, and lag reaches zero once caught up.
    let start = std::time::Instant::now();
    let metrics = loop {
        let (code, text) = get(addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let m = parse_metrics(&text);
        let lag_zero = (0..parts).all(|p| {
            m.get(&format!(
                "kconc_consumer_lag{{partition={p},subscriber=watched,topic={topic}}}"
            )) == Some(&0.0)
        });
        if lag_zero {
            break m;
        }
        assert!(start.elapsed() < DEADLINE, "lag never reached zero:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metrics["kconc_messages_received_total{subscriber=watched}"], 1_000.0);
    assert_eq!(metrics["kconc_messages_handled_total{subscriber=watched}"], 1_000.0);
    assert_eq!(metrics["kconc_messages_failed_total{subscriber=watched}"], 0.0);
    assert_eq!(metrics["kconc_in_flight{subscriber=watched}"], 0.0);
    assert_eq!(metrics["kconc_assigned_partitions{subscriber=watched}"], parts as f64);
    for p in 0..parts {
        let key = format!("kconc_committed_offset{{partition={p},subscriber=watched,topic={topic}}}");
        assert_eq!(metrics[&key], ends[p as usize] as f64, "{key}");
    }
    assert!(metrics["kconc_commits_total{subscriber=watched}"] >= 1.0);
    let stats = app.stats("watched").unwrap();
    assert_eq!(
        metrics["kconc_commits_total{subscriber=watched}"], stats.commits as f64,
        "commit counter matches the stats"
    );

    // A commit failure streak longer than the threshold: unhealthy, then
    // healthy again once commits succeed. (An error librdkafka reports at
    // once, without retrying it or looking for another coordinator, whose
    // session could then expire: the streak is the committer's own retries,
    // 100 + 200 + 400 + 800 ms.)
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 5],
    );
    let ends = produce(&bootstrap, topic, parts, 200, 10);
    let body = wait_status(addr, "/healthz", 503, "unhealthy while commits fail").await;
    assert!(body.contains("offset commits have failed"), "{body}");
    assert_eq!(status(addr, "/readyz").await, 503, "not ready while unhealthy");
    wait_status(addr, "/healthz", 200, "healthy once commits succeed again").await;
    wait_for("committed == ends after the streak", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends)
    })
    .await;

    // No configured secret in any endpoint.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (_, body) = get(addr, path).await.unwrap();
        assert!(!body.contains(SECRET), "{path} shows the secret");
    }

    // During shutdown: alive (draining), not ready; closed afterwards.
    slow.store(true, Ordering::SeqCst);
    produce(&bootstrap, topic, parts, 100, 10);
    wait_for("a slow handler in flight", DEADLINE, || {
        app.stats("watched").unwrap().dispatched > app.stats("watched").unwrap().handled
    })
    .await;
    let shutdown = app.shutdown_handle();
    shutdown.shutdown();
    let body = wait_status(addr, "/readyz", 503, "not ready while shutting down").await;
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(status(addr, "/healthz").await, 200, "alive while draining");
    app.wait().await;
    assert!(
        get(addr, "/healthz").await.is_none(),
        "the endpoint is closed after shutdown"
    );
}

/// A partition stopped by `on_error = "stop"` needs an operator: the
/// subscriber is no longer ready (and says why), but stays live, so an
/// orchestrator does not restart it in a loop (each restart rebalancing
/// the whole group and stopping again at the same message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_partition_withdraws_readiness_says_why_and_stays_live() {
    let (topic, group, parts) = ("stopping", "g-stopping", 2);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let sub = Subscriber::new("stopping", [topic], group, |m: Message| async move {
        if m.partition() == 1 && m.offset() == 5 {
            Err("cannot post this one")
        } else {
            Ok(())
        }
    })
    .on_error(OnError::Stop);
    let app = test_app(&bootstrap)
        .http("127.0.0.1:0")
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let addr = app.http_addr().unwrap();
    produce(&bootstrap, topic, parts, 40, 4);
    let body = wait_status(addr, "/readyz", 503, "not ready with a stopped partition").await;
    assert!(body.contains("partition stopping[1] stopped at offset 5"), "{body}");
    assert!(body.contains("cannot post this one"), "{body}");
    assert_eq!(
        status(addr, "/healthz").await,
        200,
        "a stopped partition fails liveness"
    );
    let health = app.health();
    assert!(health.healthy && !health.ready, "{health:?}");
    assert_eq!(health.subscribers[0].stopped.len(), 1);
    let metrics = parse_metrics(&app.metrics_text().unwrap());
    assert_eq!(metrics["kconc_stopped_partitions{subscriber=stopping}"], 1.0);
    assert_eq!(metrics["kconc_healthy{subscriber=stopping}"], 1.0);
    assert_eq!(metrics["kconc_ready{subscriber=stopping}"], 0.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_http_address_fails_at_start_naming_the_setting() {
    let cluster = cluster("unserved", 1);
    let sub = Subscriber::new("unserved", ["unserved"], "g", |_m: Message| async {});
    let err = test_app(cluster.bootstrap_servers())
        .http("not-an-address")
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap_err()
        .to_string();
    assert!(err.contains("--http/KCONC_HTTP `not-an-address`"), "{err}");
}

/// A handler stuck at offset 5 of partition 1 while messages keep coming
/// behind it: metrics show how long the oldest handler has run, and once
/// the partition's committed offset has not moved for
/// `partition_stalled_for` (1 s here), health names it and withdraws
/// readiness (liveness stays: a restart would not help). Both clear once
/// the handler ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_handler_shows_in_metrics_and_its_stalled_partition_in_health() {
    let (topic, group, parts) = ("stalled", "g-stalled", 2);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let sub = Subscriber::new("stalled", [topic], group, move |m: Message| {
        let g = g.clone();
        async move {
            if m.partition() == 1 && m.offset() == 5 {
                let _ = g.acquire().await;
            }
        }
    })
    .commit_interval(Duration::from_millis(100));
    let app = test_app(&bootstrap)
        .health_thresholds(HealthThresholds {
            partition_stalled_for: Duration::from_secs(1),
            ..HealthThresholds::default()
        })
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    let ends = produce(&bootstrap, topic, parts, 100, 10);
    wait_for("partition 1 reported stalled", DEADLINE, || {
        !app.health().subscribers[0].stalled.is_empty()
    })
    .await;
    let health = app.health();
    let s = &health.subscribers[0];
    assert_eq!(
        s.stalled
            .iter()
            .map(|p| (p.topic.as_str(), p.partition))
            .collect::<Vec<_>>(),
        [(topic, 1)],
        "{health:?}"
    );
    assert!(s.healthy && !s.ready, "{health:?}");
    assert!(
        s.problems
            .iter()
            .any(|p| p.contains("stalled[1]") && p.contains("has not moved")),
        "{:?}",
        s.problems
    );
    assert!(
        s.oldest_handler.is_some_and(|d| d >= Duration::from_secs(1)),
        "{health:?}"
    );
    let metrics = parse_metrics(&app.metrics_text().unwrap());
    assert!(
        metrics["kconc_oldest_handler_seconds{subscriber=stalled}"] >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["kconc_stalled_partitions{subscriber=stalled}"], 1.0);
    gate.add_permits(1);
    wait_for("committed to the ends, ready again", DEADLINE, || {
        committed(&bootstrap, group, topic, parts) == all_committed(&ends) && app.health().ready
    })
    .await;
    assert!(app.health().subscribers[0].stalled.is_empty());
    let metrics = parse_metrics(&app.metrics_text().unwrap());
    assert_eq!(metrics["kconc_oldest_handler_seconds{subscriber=stalled}"], 0.0);
    app.shutdown().await;
}

/// With two and three subscribers `/metrics` is still valid OpenMetrics:
/// each family's metadata once (the handler-duration histogram included),
/// every subscriber's samples in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_valid_openmetrics_with_several_subscribers() {
    let (topic, parts, n) = ("several", 2, 20);
    let cluster = cluster(topic, parts);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, parts, n, 4);
    for count in [2, 3] {
        let names: Vec<String> = (0..count).map(|i| format!("sub{i}-of-{count}")).collect();
        let mut app = test_app(&bootstrap).http("127.0.0.1:0");
        for name in &names {
            app = app.subscriber(Subscriber::new(
                name.clone(),
                [topic],
                name.clone(),
                |_m: Message| async {},
            ));
        }
        let app = app.start_in_test_mode().unwrap();
        wait_for("every subscriber handled every message", DEADLINE, || {
            names.iter().all(|s| app.stats(s).unwrap().handled == n as u64)
        })
        .await;
        let (code, text) = get(app.http_addr().unwrap(), "/metrics").await.unwrap();
        assert_eq!(code, 200);
        let metrics = parse_metrics(&text);
        assert_eq!(
            text.matches("# TYPE kconc_handler_duration_seconds histogram").count(),
            1,
            "{text}"
        );
        for name in &names {
            let key = format!("kconc_handler_duration_seconds_count{{subscriber={name}}}");
            assert_eq!(
                text.matches(&format!(
                    "kconc_handler_duration_seconds_count{{subscriber=\"{name}\"}}"
                ))
                .count(),
                1,
                "{key}\n{text}"
            );
            assert_eq!(
                metrics[&format!("kconc_messages_handled_total{{subscriber={name}}}")],
                n as f64
            );
        }
        app.shutdown().await;
    }
}

//! Operating a running app: health (liveness and readiness), Prometheus
//! metrics, and the optional HTTP endpoint that serves both
//! (`--http 127.0.0.1:9090` / `KCONC_HTTP`: `/healthz`, `/readyz`, `/metrics`).
//!
//! Everything here reads the counters and flags each subscriber's poll loop
//! and committer publish in its `Stats`; nothing here talks to Kafka.
//! Nothing configured (brokers, properties, secrets) is ever part of it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::stats::{unix_ms, Stats, StatsSnapshot, StoppedPartition, COUNTER_METRICS};
use crate::watch::ClusterWatch;
use crate::Error;

/// When health calls a subscriber unhealthy.
#[derive(Clone, Copy, Debug)]
pub struct HealthThresholds {
    /// Commits failing without a success for this long: unhealthy (default 60 s).
    pub commit_failures_for: Duration,
    /// The poll loop not turning for this long: not live (default 60 s; it
    /// turns at least every 100 ms unless a revoke waits for handlers).
    pub poll_stalled_for: Duration,
    /// A partition whose committed offset has not moved for this long while
    /// messages wait behind it (read past it, not committed): not ready,
    /// and reported (default 5 minutes). A stuck or very slow handler, or
    /// a message whose retries last that long, holds a partition so.
    pub partition_stalled_for: Duration,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            commit_failures_for: Duration::from_secs(60),
            poll_stalled_for: Duration::from_secs(60),
            partition_stalled_for: Duration::from_secs(300),
        }
    }
}

/// A partition whose committed offset has not moved for longer than
/// [`HealthThresholds::partition_stalled_for`] while messages wait behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StalledPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// How long its committed offset has not moved.
    pub stalled_for: Duration,
}

/// One subscriber's state as health sees it.
#[derive(Clone, Debug)]
pub struct SubscriberHealth {
    /// The subscriber's name.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Its poll thread runs (false once it has ended, after a shutdown or not).
    pub running: bool,
    /// Its poll loop and committer are alive and turning, and commits are
    /// not failing beyond the threshold (liveness: a restart may help).
    pub healthy: bool,
    /// It is healthy, is in its group (joined, with partitions or
    /// deliberately none, and not since lost its assignment without
    /// rejoining), no partition of it is stopped by the error policy, and
    /// it is not shutting down (readiness: it is doing its work).
    pub ready: bool,
    /// Why it is unhealthy or not ready (empty when healthy and ready).
    pub problems: Vec<String>,
    /// The partitions assigned now.
    pub assigned: Vec<(String, i32)>,
    /// When the poll loop last turned.
    pub last_poll: Option<SystemTime>,
    /// When a commit last succeeded.
    pub last_commit: Option<SystemTime>,
    /// How long commits have failed without a success, if they are failing.
    pub commits_failing_for: Option<Duration>,
    /// Partitions stopped by the error policy, with the offset and why.
    pub stopped: Vec<StoppedPartition>,
    /// Partitions paused by backpressure now.
    pub paused: Vec<(String, i32)>,
    /// Partitions whose commits have stalled (see
    /// [`HealthThresholds::partition_stalled_for`]).
    pub stalled: Vec<StalledPartition>,
    /// How long the oldest handler running now has run, if one runs.
    pub oldest_handler: Option<Duration>,
    /// How long no broker of the cluster could be reached, if none can now
    /// (not ready meanwhile).
    pub cluster_unreachable_for: Option<Duration>,
    /// Its subscribed topics the cluster says do not exist (not ready
    /// meanwhile).
    pub missing_topics: Vec<String>,
}

/// The whole app's health: live unless some subscriber is unhealthy, ready
/// when every subscriber is.
#[derive(Clone, Debug)]
pub struct Health {
    /// No subscriber is unhealthy.
    pub healthy: bool,
    /// Every subscriber is ready.
    pub ready: bool,
    /// Per subscriber.
    pub subscribers: Vec<SubscriberHealth>,
}

impl Health {
    /// A plain-text report, one line per subscriber and one per problem.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for s in &self.subscribers {
            out.push_str(&format!(
                "{} group={} healthy={} ready={} assigned={} stopped={} paused={} stalled={}\n",
                s.name,
                s.group,
                s.healthy,
                s.ready,
                s.assigned.len(),
                s.stopped.len(),
                s.paused.len(),
                s.stalled.len()
            ));
            for p in &s.problems {
                out.push_str(&format!("  {p}\n"));
            }
        }
        out
    }
}

/// What health and metrics read for one subscriber.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) group: String,
    pub(crate) stats: Arc<Stats>,
    /// The app's view of its cluster, shared by its subscribers.
    pub(crate) cluster: Arc<ClusterWatch>,
}

fn time_of(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

pub(crate) fn subscriber_health(w: &Watched, t: &HealthThresholds) -> SubscriberHealth {
    let s = &w.stats;
    let now = unix_ms();
    let closing = s.closing.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    let mut healthy = true;
    if !s.poll_alive.load(Ordering::Relaxed) && !closing {
        healthy = false;
        problems.push("the poll loop has stopped".to_owned());
    }
    if !s.committer_alive.load(Ordering::Relaxed) && !closing {
        healthy = false;
        problems.push("the committer has stopped".to_owned());
    }
    let last_poll = s.last_poll_ms.load(Ordering::Relaxed);
    if last_poll > 0 && !closing && now.saturating_sub(last_poll) > t.poll_stalled_for.as_millis() as u64 {
        healthy = false;
        problems.push(format!("the poll loop has not turned for {} ms", now - last_poll));
    }
    let failing_since = s.commit_failing_since_ms.load(Ordering::Relaxed);
    let commits_failing_for = (failing_since > 0).then(|| Duration::from_millis(now.saturating_sub(failing_since)));
    if let Some(d) = commits_failing_for {
        if d > t.commit_failures_for {
            healthy = false;
            problems.push(format!("offset commits have failed for {} s", d.as_secs()));
        }
    }
    // A stopped partition needs an operator, not a restart: a liveness
    // failure would restart the member (rebalancing the whole group each
    // time) and stop it again at the same message. It withdraws readiness.
    let stopped = s.stopped_partitions();
    let mut degraded = false;
    for p in &stopped {
        degraded = true;
        problems.push(format!(
            "partition {}[{}] stopped at offset {} by the error policy: {}",
            p.topic, p.partition, p.offset, p.reason
        ));
    }
    let stalled = stalled_partitions(s, t, now);
    for p in &stalled {
        degraded = true;
        problems.push(format!(
            "partition {}[{}]: its committed offset has not moved for {} s while messages wait behind it \
             (a stuck or slow handler, or long retries; see kconc_oldest_handler_seconds)",
            p.topic,
            p.partition,
            p.stalled_for.as_secs()
        ));
    }
    // Neither is cured by a restart: both withdraw readiness only.
    let cluster_unreachable = w.cluster.unreachable().filter(|_| !closing);
    if let Some((since, reason)) = &cluster_unreachable {
        degraded = true;
        problems.push(format!(
            "cannot reach the cluster at {} (for {} s): {reason}",
            w.cluster.brokers(),
            since.as_secs()
        ));
    }
    let missing_topics = s.missing_topics.lock().map(|m| m.clone()).unwrap_or_default();
    for topic in &missing_topics {
        degraded = true;
        problems.push(format!(
            "subscribed topic `{topic}` does not exist on the cluster (waiting for it)"
        ));
    }
    let joined = s.joined.load(Ordering::Relaxed);
    let ready = joined && !closing && healthy && !degraded;
    if closing {
        problems.push("shutting down".to_owned());
    } else if !joined {
        problems.push(
            "not in its consumer group: it has not joined yet, or lost its assignment and not rejoined".to_owned(),
        );
    }
    SubscriberHealth {
        name: w.name.clone(),
        group: w.group.clone(),
        running: s.poll_alive.load(Ordering::Relaxed),
        healthy,
        ready,
        problems,
        assigned: s.assigned(),
        last_poll: time_of(last_poll),
        last_commit: time_of(s.last_commit_ms.load(Ordering::Relaxed)),
        commits_failing_for,
        stopped,
        paused: s
            .pauses()
            .into_iter()
            .filter(|p| p.paused)
            .map(|p| (p.topic, p.partition))
            .collect(),
        stalled,
        oldest_handler: s.oldest_running(),
        cluster_unreachable_for: cluster_unreachable.map(|(since, _)| since),
        missing_topics,
    }
}

fn stalled_partitions(s: &Stats, t: &HealthThresholds, now: u64) -> Vec<StalledPartition> {
    let Ok(progress) = s.progress.lock() else {
        return Vec::new();
    };
    progress
        .iter()
        .filter(|(_, &(since, waiting))| {
            waiting && now.saturating_sub(since) > t.partition_stalled_for.as_millis() as u64
        })
        .map(|((topic, partition), &(since, _))| StalledPartition {
            topic: topic.clone(),
            partition: *partition,
            stalled_for: Duration::from_millis(now.saturating_sub(since)),
        })
        .collect()
}

pub(crate) fn health(watched: &[Watched], t: &HealthThresholds) -> Health {
    let subscribers: Vec<SubscriberHealth> = watched.iter().map(|w| subscriber_health(w, t)).collect();
    Health {
        healthy: subscribers.iter().all(|s| s.healthy),
        ready: subscribers.iter().all(|s| s.ready),
        subscribers,
    }
}

type Labels = Vec<(String, String)>;

/// Each subscriber's own histogram (they live in its stats), exposed as
/// one labelled family.
#[derive(Debug)]
struct Histograms(Vec<(Labels, Histogram)>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, histogram) in &self.0 {
            histogram.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn sub_labels(name: &str) -> Labels {
    vec![("subscriber".to_owned(), name.to_owned())]
}

fn partition_labels(name: &str, topic: &str, partition: i32) -> Labels {
    vec![
        ("subscriber".to_owned(), name.to_owned()),
        ("topic".to_owned(), topic.to_owned()),
        ("partition".to_owned(), partition.to_string()),
    ]
}

/// The Prometheus text exposition of every subscriber's metrics.
pub(crate) fn metrics_text(watched: &[Watched], t: &HealthThresholds) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("kconc");
    let snapshots: Vec<(&str, StatsSnapshot)> = watched.iter().map(|w| (w.name.as_str(), w.stats.snapshot())).collect();
    for (name, help, get) in COUNTER_METRICS {
        let family = Family::<Labels, Counter>::default();
        for (sub, snapshot) in &snapshots {
            family.get_or_create(&sub_labels(sub)).inc_by(get(snapshot));
        }
        registry.register(*name, *help, family);
    }
    let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

    let gauge = |registry: &mut Registry, name: &str, help: &str, get: &dyn Fn(&Watched) -> i64| {
        let family = Family::<Labels, Gauge>::default();
        for w in watched {
            family.get_or_create(&sub_labels(&w.name)).set(get(w));
        }
        registry.register(name, help, family);
    };
    gauge(&mut registry, "in_flight", "Handlers running now", &|w| {
        r(&w.stats.in_flight) as i64
    });
    gauge(
        &mut registry,
        "buffered",
        "Messages read and waiting for a handler slot",
        &|w| r(&w.stats.buffered) as i64,
    );
    gauge(&mut registry, "assigned_partitions", "Partitions assigned now", &|w| {
        w.stats.assigned().len() as i64
    });
    gauge(
        &mut registry,
        "paused_partitions",
        "Partitions paused by backpressure now",
        &|w| w.stats.pauses().iter().filter(|p| p.paused).count() as i64,
    );
    gauge(
        &mut registry,
        "stopped_partitions",
        "Partitions stopped by the error policy",
        &|w| w.stats.stopped_partitions().len() as i64,
    );
    gauge(
        &mut registry,
        "stalled_partitions",
        "Partitions whose committed offset has not moved for partition_stalled_for while messages wait behind it",
        &|w| stalled_partitions(&w.stats, t, unix_ms()).len() as i64,
    );
    gauge(
        &mut registry,
        "cluster_reachable",
        "0 while no broker of the cluster can be reached, else 1",
        &|w| i64::from(w.cluster.unreachable().is_none()),
    );
    gauge(
        &mut registry,
        "missing_topics",
        "Subscribed topics the cluster says do not exist",
        &|w| w.stats.missing_topics.lock().map_or(0, |m| m.len() as i64),
    );
    gauge(&mut registry, "healthy", "1 when the subscriber is healthy", &|w| {
        i64::from(subscriber_health(w, t).healthy)
    });
    gauge(&mut registry, "ready", "1 when the subscriber is ready", &|w| {
        i64::from(subscriber_health(w, t).ready)
    });

    let oldest = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for w in watched {
        let age = w.stats.oldest_running().unwrap_or_default();
        oldest.get_or_create(&sub_labels(&w.name)).set(age.as_secs_f64());
    }
    registry.register(
        "oldest_handler_seconds",
        "How long the oldest handler running now has run (0 when none runs)",
        oldest,
    );
    let committed = Family::<Labels, Gauge>::default();
    let high = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge>::default();
    for w in watched {
        let commits = w.stats.committed.lock().map(|m| m.clone()).unwrap_or_default();
        let marks = w.stats.high_watermarks.lock().map(|m| m.clone()).unwrap_or_default();
        let starts = w.stats.fetch_starts.lock().map(|m| m.clone()).unwrap_or_default();
        for ((topic, p), offset) in &commits {
            committed
                .get_or_create(&partition_labels(&w.name, topic, *p))
                .set(*offset);
        }
        for ((topic, p), h) in &marks {
            high.get_or_create(&partition_labels(&w.name, topic, *p)).set(*h);
            // Lag counts from this member's last commit of the partition,
            // or before that from the first offset it read there. With
            // neither (nothing read since the assignment) it is unknown and
            // left out rather than reported as the whole partition.
            let key = (topic.clone(), *p);
            let Some(&from) = commits.get(&key).or_else(|| starts.get(&key)) else {
                continue;
            };
            lag.get_or_create(&partition_labels(&w.name, topic, *p))
                .set((h - from).max(0));
        }
    }
    registry.register("committed_offset", "The last committed offset per partition", committed);
    registry.register("high_watermark", "The partition's end offset as last fetched", high);
    registry.register(
        "consumer_lag",
        "High watermark minus committed offset per partition",
        lag,
    );
    // One family, one metadata block, each subscriber's histogram in it
    // (OpenMetrics allows a family's metadata once, before its samples).
    registry.register(
        "handler_duration_seconds",
        "How long handler calls take",
        Histograms(
            watched
                .iter()
                .map(|w| (sub_labels(&w.name), w.stats.handler_seconds.0.clone()))
                .collect(),
        ),
    );
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| Error::Config(format!("cannot encode metrics: {e}")))?;
    Ok(out)
}

/// Binds the HTTP endpoint's address (`--http`), before anything connects:
/// a bad or busy address fails start-up naming the setting.
pub(crate) fn bind(addr: &str) -> Result<(std::net::TcpListener, SocketAddr), Error> {
    let bad = |e: std::io::Error| Error::Config(format!("--http/KCONC_HTTP `{addr}`: {e}"));
    let listener = std::net::TcpListener::bind(addr).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    let local = listener.local_addr().map_err(bad)?;
    Ok((listener, local))
}

/// The HTTP endpoint on a listener from [`bind`]: serves until `stop` is
/// cancelled.
pub(crate) fn serve(
    (std_listener, local): (std::net::TcpListener, SocketAddr),
    watched: Vec<Watched>,
    thresholds: HealthThresholds,
    stop: CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let state = Arc::new((watched, thresholds));
    let (h, r, m) = (state.clone(), state.clone(), state);
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = health(&h.0, &h.1);
                let code = if health.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (code, health.report()) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let health = health(&r.0, &r.1);
                let code = if health.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (code, health.report()) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let result = metrics_text(&m.0, &m.1);
                async move {
                    match result {
                        Ok(text) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        ),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("content-type", "text/plain; charset=utf-8")],
                            e.to_string(),
                        ),
                    }
                }
            }),
        );
    let task = runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the HTTP endpoint cannot start");
                return;
            }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP endpoint failed");
        }
    });
    tracing::info!(address = %local, "HTTP endpoint: /healthz /readyz /metrics");
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A subscriber whose loops run, joined, polled and committed just now.
    fn running() -> Watched {
        let stats = Stats::default();
        let now = unix_ms();
        stats.poll_alive.store(true, Ordering::Relaxed);
        stats.committer_alive.store(true, Ordering::Relaxed);
        stats.joined.store(true, Ordering::Relaxed);
        stats.last_poll_ms.store(now, Ordering::Relaxed);
        stats.last_commit_ms.store(now, Ordering::Relaxed);
        Watched {
            name: "s".into(),
            group: "g".into(),
            stats: Arc::new(stats),
            cluster: ClusterWatch::new("b"),
        }
    }

    fn check(w: &Watched) -> SubscriberHealth {
        subscriber_health(w, &HealthThresholds::default())
    }

    fn set(flag: &AtomicBool, v: bool) {
        flag.store(v, Ordering::Relaxed);
    }

    #[test]
    fn a_running_joined_subscriber_is_healthy_and_ready() {
        let h = check(&running());
        assert!(h.healthy && h.ready && h.running, "{:?}", h.problems);
        assert!(h.problems.is_empty());
    }

    #[test]
    fn a_dead_poll_loop_or_committer_is_unhealthy_unless_shutting_down() {
        let w = running();
        set(&w.stats.poll_alive, false);
        let h = check(&w);
        assert!(!h.healthy && !h.ready && !h.running);
        assert!(h.problems.iter().any(|p| p.contains("poll loop has stopped")));
        set(&w.stats.poll_alive, true);
        set(&w.stats.committer_alive, false);
        let h = check(&w);
        assert!(!h.healthy && h.problems.iter().any(|p| p.contains("committer has stopped")));
        set(&w.stats.closing, true);
        let h = check(&w);
        assert!(h.healthy && !h.ready, "{:?}", h.problems);
        assert!(h.problems.iter().any(|p| p.contains("shutting down")));
    }

    #[test]
    fn a_stalled_poll_loop_is_unhealthy() {
        let w = running();
        w.stats.last_poll_ms.store(unix_ms() - 61_000, Ordering::Relaxed);
        let h = check(&w);
        assert!(!h.healthy && h.problems.iter().any(|p| p.contains("has not turned")));
    }

    #[test]
    fn commits_failing_beyond_the_threshold_are_unhealthy() {
        let w = running();
        w.stats
            .commit_failing_since_ms
            .store(unix_ms() - 30_000, Ordering::Relaxed);
        let h = check(&w);
        assert!(h.healthy, "30 s of failures is within the 60 s default");
        assert!(h.commits_failing_for.is_some_and(|d| d >= Duration::from_secs(30)));
        w.stats
            .commit_failing_since_ms
            .store(unix_ms() - 61_000, Ordering::Relaxed);
        assert!(!check(&w).healthy);
    }

    #[test]
    fn not_ready_before_joining() {
        let w = running();
        set(&w.stats.joined, false);
        let h = check(&w);
        assert!(h.healthy && !h.ready);
        assert!(h.problems.iter().any(|p| p.contains("has not joined")));
    }

    #[test]
    fn metrics_encode_with_partition_labels_and_lag() {
        let w = running();
        w.stats.handled.store(7, Ordering::Relaxed);
        w.stats.committed.lock().unwrap().insert(("t".into(), 0), 40);
        w.stats.high_watermarks.lock().unwrap().insert(("t".into(), 0), 50);
        let text = metrics_text(&[w], &HealthThresholds::default()).unwrap();
        assert!(
            text.contains("kconc_messages_handled_total{subscriber=\"s\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("kconc_consumer_lag{subscriber=\"s\",topic=\"t\",partition=\"0\"} 10"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn lag_counts_from_the_first_offset_read_until_a_commit_and_is_left_out_without_either() {
        let w = running();
        w.stats.fetch_starts.lock().unwrap().insert(("t".into(), 1), 1_000);
        w.stats.high_watermarks.lock().unwrap().insert(("t".into(), 1), 1_250);
        w.stats.high_watermarks.lock().unwrap().insert(("t".into(), 2), 900);
        let text = metrics_text(std::slice::from_ref(&w), &HealthThresholds::default()).unwrap();
        assert!(
            text.contains("kconc_consumer_lag{subscriber=\"s\",topic=\"t\",partition=\"1\"} 250"),
            "{text}"
        );
        assert!(
            !text.contains("kconc_consumer_lag{subscriber=\"s\",topic=\"t\",partition=\"2\"}"),
            "no basis for partition 2's lag, so none is reported: {text}"
        );
        assert!(
            text.contains("kconc_high_watermark{subscriber=\"s\",topic=\"t\",partition=\"2\"} 900"),
            "{text}"
        );
        w.stats.committed.lock().unwrap().insert(("t".into(), 1), 1_200);
        let text = metrics_text(&[w], &HealthThresholds::default()).unwrap();
        assert!(
            text.contains("kconc_consumer_lag{subscriber=\"s\",topic=\"t\",partition=\"1\"} 50"),
            "a commit takes over from the first offset read: {text}"
        );
    }
}

//! Operating a running app: health (liveness and readiness), Prometheus
//! metrics, the status page, and the optional HTTP endpoint that serves
//! them (`--http 127.0.0.1:9090` / `KCONC_HTTP`: `/`, `/healthz`,
//! `/readyz`, `/metrics`).
//!
//! Everything here reads the counters and flags each subscriber's poll loop
//! and committer publish in its `Stats`; nothing here talks to Kafka.
//! Nothing configured (brokers, properties, secrets) is ever part of it.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stats::{unix_ms, Stats, StoppedPartition};
use crate::watch::Watched;

mod http;
mod metrics;
mod page;

pub(crate) use http::{bind, serve};
pub(crate) use metrics::{metrics_text, registry};

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
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// The topics it consumes, replies or dead-letters to that the cluster
    /// says do not exist (not ready meanwhile).
    pub missing_topics: Vec<String>,
}

/// The whole app's health: live unless some subscriber is unhealthy, ready
/// when every subscriber is.
#[derive(Clone, Debug)]
#[non_exhaustive]
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

fn time_of(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

pub(crate) fn subscriber_health(w: &Watched, t: &HealthThresholds) -> SubscriberHealth {
    let s = &w.stats;
    let now = unix_ms();
    let closing = s.closing.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    let mut healthy = true;
    let failed = s.stopped_because.lock().map(|f| f.clone()).unwrap_or_default();
    if let Some(why) = failed {
        healthy = false;
        problems.push(format!("stopped: {why}"));
    } else if !s.poll_alive.load(Ordering::Relaxed) && !closing {
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
        problems.push(if p.offset < 0 {
            format!("partition {}[{}] stopped: {}", p.topic, p.partition, p.reason)
        } else {
            format!(
                "partition {}[{}] stopped at offset {} by the error policy: {}",
                p.topic, p.partition, p.offset, p.reason
            )
        });
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
    // Nothing is skipped meanwhile: handlers wait for the database.
    if let Some(why) = s.store_waiting.lock().map(|w| w.clone()).unwrap_or_default() {
        degraded = true;
        problems.push(format!("waiting for its database (store = \"sql\"): {why}"));
    }
    let missing_topics = s.missing_topics.lock().map(|m| m.clone()).unwrap_or_default();
    for topic in &missing_topics {
        degraded = true;
        let what = if w.topics.contains(topic) {
            "subscribed topic"
        } else {
            "topic it replies or dead-letters to:"
        };
        problems.push(format!(
            "{what} `{topic}` does not exist on the cluster (waiting for it)"
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::watch::ClusterWatch;

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
            topics: vec!["t".into()],
            produces_to: Vec::new(),
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
        let text = metrics_text(&registry(vec![w], HealthThresholds::default())).unwrap();
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
        // One registry, scraped twice: each scrape reads the live state.
        let registry = registry(vec![w.clone()], HealthThresholds::default());
        let text = metrics_text(&registry).unwrap();
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
        let text = metrics_text(&registry).unwrap();
        assert!(
            text.contains("kconc_consumer_lag{subscriber=\"s\",topic=\"t\",partition=\"1\"} 50"),
            "a commit takes over from the first offset read: {text}"
        );
    }
}

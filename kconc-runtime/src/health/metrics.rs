//! `/metrics`: every subscriber's counters, gauges and handler histogram
//! in the OpenMetrics text format.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{stalled_partitions, subscriber_health, HealthThresholds};
use crate::error::Error;
use crate::stats::{unix_ms, StatsSnapshot, COUNTER_METRICS};
use crate::watch::Watched;

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
    encode(&mut out, &registry).map_err(Error::Metrics)?;
    Ok(out)
}

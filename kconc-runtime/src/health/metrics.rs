//! `/metrics`: every subscriber's counters, gauges and handler histogram
//! in the OpenMetrics text format, from one [`Collector`] registered once
//! (with the HTTP endpoint, or for one [`Running::metrics_text`](crate::Running::metrics_text)
//! call): each scrape reads the subscribers' live state. Counters come
//! from the stats table (`COUNTER_METRICS`), gauges from [`GAUGES`], so a
//! metric is declared once.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{stalled_partitions, subscriber_health, HealthThresholds};
use crate::error::Error;
use crate::stats::{unix_ms, Stats, StatsSnapshot, COUNTER_METRICS};
use crate::watch::Watched;

type Labels = Vec<(String, String)>;

/// A gauge per subscriber: its name (after the `kconc_` prefix), its help,
/// and how it is read from the subscriber's live state.
type GaugeOf = (&'static str, &'static str, fn(&Watched, &HealthThresholds) -> i64);

fn load(a: &AtomicU64) -> i64 {
    i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every per-subscriber gauge, in the order `/metrics` lists them.
const GAUGES: &[GaugeOf] = &[
    ("in_flight", "Handlers running now", |w, _| load(&w.stats.in_flight)),
    ("batches_in_flight", "Calls of a batch handler running now", |w, _| {
        load(&w.stats.batches_in_flight)
    }),
    ("buffered", "Messages read and waiting for a handler slot", |w, _| {
        load(&w.stats.buffered)
    }),
    ("assigned_partitions", "Partitions assigned now", |w, _| {
        count(w.stats.assigned().len())
    }),
    ("paused_partitions", "Partitions paused by backpressure now", |w, _| {
        count(w.stats.pauses().iter().filter(|p| p.paused).count())
    }),
    (
        "stopped_partitions",
        "Partitions stopped by the error policy",
        |w, _| count(w.stats.stopped_partitions().len()),
    ),
    (
        "stalled_partitions",
        "Partitions whose committed offset has not moved for partition_stalled_for while messages wait behind it",
        |w, t| count(stalled_partitions(&w.stats, t, unix_ms()).len()),
    ),
    (
        "cluster_reachable",
        "0 while no broker of the cluster can be reached, else 1",
        |w, _| i64::from(w.cluster.unreachable().is_none()),
    ),
    (
        "missing_topics",
        "Subscribed topics the cluster says do not exist",
        |w, _| w.stats.missing_topics.lock().map_or(0, |m| count(m.len())),
    ),
    ("healthy", "1 when the subscriber is healthy", |w, t| {
        i64::from(subscriber_health(w, t).healthy)
    }),
    ("ready", "1 when the subscriber is ready", |w, t| {
        i64::from(subscriber_health(w, t).ready)
    }),
];

/// A family's metadata: its name and help (ending with a period, as the
/// registry writes a registered metric's), and its type.
fn describe<'e>(
    encoder: &'e mut DescriptorEncoder<'_>,
    name: &'e str,
    help: &str,
    metric_type: MetricType,
) -> Result<prometheus_client::encoding::MetricEncoder<'e>, std::fmt::Error> {
    encoder.encode_descriptor(name, &format!("{help}."), None, metric_type)
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

/// One partition's row of the per-partition gauges (and of the status
/// page): its committed offset, high watermark and lag, each where known.
pub(super) struct PartitionRow {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) committed: Option<i64>,
    pub(super) high: Option<i64>,
    pub(super) lag: Option<i64>,
}

/// The partitions `w` has committed or fetched, in order, with their
/// committed offset, high watermark and lag.
pub(super) fn partition_rows(w: &Watched) -> Vec<PartitionRow> {
    let commits = w.stats.committed.lock().map(|m| m.clone()).unwrap_or_default();
    let marks = w.stats.high_watermarks.lock().map(|m| m.clone()).unwrap_or_default();
    let starts = w.stats.fetch_starts.lock().map(|m| m.clone()).unwrap_or_default();
    let mut keys: Vec<&(String, i32)> = commits.keys().chain(marks.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key @ (topic, p)| {
            let high = marks.get(key).copied();
            // Lag counts from this member's last commit of the partition,
            // or before that from the first offset it read there. With
            // neither (nothing read since the assignment) it is unknown
            // and left out rather than reported as the whole partition.
            let from = commits.get(key).or_else(|| starts.get(key));
            PartitionRow {
                topic: topic.clone(),
                partition: *p,
                committed: commits.get(key).copied(),
                high,
                lag: high.zip(from).map(|(h, from)| (h - from).max(0)),
            }
        })
        .collect()
}

/// A per-partition gauge: its name, its help, and how a row gives it.
type PartitionGauge = (&'static str, &'static str, fn(&PartitionRow) -> Option<i64>);

/// A histogram per subscriber: its name, its help, and where it is kept.
type HistogramOf = (
    &'static str,
    &'static str,
    fn(&Stats) -> &prometheus_client::metrics::histogram::Histogram,
);

/// The histograms, in the order `/metrics` lists them.
const HISTOGRAMS: &[HistogramOf] = &[
    ("handler_duration_seconds", "How long handler calls take", |s| {
        &s.handler_seconds.0
    }),
    ("batch_size", "Messages per call of a batch handler", |s| {
        &s.batch_size.0
    }),
];

/// The per-partition gauges, in the order `/metrics` lists them.
const PARTITION_GAUGES: &[PartitionGauge] = &[
    ("committed_offset", "The last committed offset per partition", |r| {
        r.committed
    }),
    ("high_watermark", "The partition's end offset as last fetched", |r| {
        r.high
    }),
    (
        "consumer_lag",
        "High watermark minus committed offset per partition",
        |r| r.lag,
    ),
];

/// The metrics of the watched subscribers, read at each scrape.
#[derive(Debug)]
struct Exposition {
    watched: Vec<Watched>,
    thresholds: HealthThresholds,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<(&str, StatsSnapshot)> = self
            .watched
            .iter()
            .map(|w| (w.name.as_str(), w.stats.snapshot()))
            .collect();
        for (name, help, get) in COUNTER_METRICS {
            let mut family = describe(&mut encoder, name, help, MetricType::Counter)?;
            for (sub, snapshot) in &snapshots {
                ConstCounter::new(get(snapshot)).encode(family.encode_family(&sub_labels(sub))?)?;
            }
        }
        for (name, help, get) in GAUGES {
            let mut family = describe(&mut encoder, name, help, MetricType::Gauge)?;
            for w in &self.watched {
                ConstGauge::new(get(w, &self.thresholds)).encode(family.encode_family(&sub_labels(&w.name))?)?;
            }
        }
        let mut family = describe(
            &mut encoder,
            "oldest_handler_seconds",
            "How long the oldest handler running now has run (0 when none runs)",
            MetricType::Gauge,
        )?;
        for w in &self.watched {
            let age = w.stats.oldest_running().unwrap_or_default();
            ConstGauge::new(age.as_secs_f64()).encode(family.encode_family(&sub_labels(&w.name))?)?;
        }
        self.encode_partitions(&mut encoder)?;
        // One family, one metadata block, each subscriber's histogram in it
        // (OpenMetrics allows a family's metadata once, before its samples).
        for (name, help, get) in HISTOGRAMS {
            let mut family = describe(&mut encoder, name, help, MetricType::Histogram)?;
            for w in &self.watched {
                get(&w.stats).encode(family.encode_family(&sub_labels(&w.name))?)?;
            }
        }
        Ok(())
    }
}

impl Exposition {
    /// The per-partition gauges: committed offset, high watermark, lag.
    fn encode_partitions(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rows: Vec<(Labels, PartitionRow)> = self
            .watched
            .iter()
            .flat_map(|w| {
                partition_rows(w)
                    .into_iter()
                    .map(|row| (partition_labels(&w.name, &row.topic, row.partition), row))
            })
            .collect();
        for (name, help, get) in PARTITION_GAUGES {
            let mut family = describe(encoder, name, help, MetricType::Gauge)?;
            for (labels, row) in &rows {
                if let Some(value) = get(row) {
                    ConstGauge::new(value).encode(family.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The registry `/metrics` encodes: kconc's prefix and one collector of
/// the watched subscribers, made once.
pub(crate) fn registry(watched: Vec<Watched>, thresholds: HealthThresholds) -> Registry {
    let mut registry = Registry::with_prefix("kconc");
    registry.register_collector(Box::new(Exposition { watched, thresholds }));
    registry
}

/// The Prometheus text exposition of `registry` (from [`registry`]).
pub(crate) fn metrics_text(registry: &Registry) -> Result<String, Error> {
    let mut out = String::new();
    encode(&mut out, registry).map_err(Error::Metrics)?;
    Ok(out)
}

//! The counters and partition state of one subscriber, written by the
//! engine (poll thread, workers, committer) and read by health, metrics
//! and [`Running`](crate::Running) while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Declares the subscriber's counters once: each becomes an atomic of
/// [`Stats`], a field of [`StatsSnapshot`] (with `snapshot()` reading it),
/// a term of the sum over subscribers (`sum` adds, `max` keeps the larger),
/// and, with `metric NAME HELP`, a Prometheus counter `kconc_NAME_total` in
/// [`COUNTER_METRICS`]. The other fields of `Stats` follow verbatim.
macro_rules! stats {
    (
        counters {
            $(
                $(#[doc = $doc:literal])*
                $field:ident as $snap:ident: $fold:ident $(, metric $metric:literal $help:literal)?;
            )*
        }
        fields {
            $(
                $(#[doc = $fdoc:literal])*
                pub $fname:ident: $fty:ty,
            )*
        }
    ) => {
        /// Counters and partition state of one subscriber, readable while it runs.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
            $( $(#[doc = $fdoc])* pub $fname: $fty, )*
        }

        /// A snapshot of a subscriber's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            $( $(#[doc = $doc])* pub $snap: u64, )*
        }

        impl Stats {
            /// Reads every counter.
            pub(crate) fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $snap: self.$field.load(Ordering::Relaxed), )*
                }
            }
        }

        /// The counters of several subscribers together.
        impl std::ops::Add for StatsSnapshot {
            type Output = Self;

            fn add(self, other: Self) -> Self {
                Self {
                    $( $snap: $fold(self.$snap, other.$snap), )*
                }
            }
        }

        /// The counters exposed as Prometheus counters: the name (between
        /// `kconc_` and `_total`), the help, and the value in a snapshot.
        pub(crate) const COUNTER_METRICS: &[(&str, &str, fn(&StatsSnapshot) -> u64)] = &[
            $( $( ($metric, $help, |s: &StatsSnapshot| s.$snap), )? )*
        ];
    };
}

/// How [`stats!`] adds a counter over subscribers.
fn sum(a: u64, b: u64) -> u64 {
    a.saturating_add(b)
}

/// How [`stats!`] takes a high-water mark over subscribers.
fn max(a: u64, b: u64) -> u64 {
    a.max(b)
}

stats! {
    counters {
        /// Messages read from Kafka (before any ordering or backpressure wait).
        received as received: sum, metric "messages_received" "Messages read from Kafka";
        /// Messages handed to handler tasks.
        dispatched as dispatched: sum;
        /// Handlers whose first poll ran on the subscriber's poll thread
        /// (see [`FirstPoll`](crate::FirstPoll)); the others ran on workers
        /// throughout.
        first_polls_here as first_polls_on_poll_thread: sum, metric "first_polls_on_poll_thread"
            "Handlers whose first poll ran on the poll thread (first_poll = auto or poll_thread)";
        /// Of those, the ones that failed or panicked on the poll thread and
        /// ran again from the start on a worker (not counted as failures).
        first_polls_rerun as first_polls_rerun_on_worker: sum, metric "first_polls_rerun_on_worker"
            "First polls that failed or panicked on the poll thread and ran again from the start on a worker";
        /// Calls of a batch handler (each of its messages counts in the
        /// message counters too).
        batches as batches: sum, metric "batches" "Calls of a batch handler";
        /// Handler calls that returned success.
        handled as handled: sum, metric "messages_handled" "Handler calls that succeeded";
        /// Handler calls that returned an error.
        failed as failed: sum, metric "messages_failed" "Handler calls that returned an error";
        /// Handler calls that panicked.
        panicked as panicked: sum, metric "messages_panicked" "Handler calls that panicked";
        /// Failed attempts scheduled for a retry.
        retried as retried: sum, metric "messages_retried" "Failed attempts scheduled for a retry";
        /// Messages produced to the dead-letter topic.
        dead_lettered as dead_lettered: sum, metric "messages_dead_lettered"
            "Messages produced to the dead-letter topic";
        /// Dead-letter produces that failed (retried, or stopping the
        /// partition when retrying cannot fix them).
        dead_letter_failures as dead_letter_failures: sum, metric "dead_letter_failures"
            "Dead-letter produces that failed (retried, or stopping their partition when retrying cannot fix them)";
        /// Messages that failed for good and were skipped (`on_error = skip`):
        /// counted as finished without being handled.
        skipped as skipped: sum, metric "messages_skipped"
            "Messages that failed for good and were skipped (on_error = skip)";
        /// Messages that stopped their partition (`on_error = stop`, or a
        /// dead letter that cannot be produced).
        stopped as stopped: sum, metric "messages_stopped"
            "Messages that stopped their partition (on_error = stop, or a dead letter that cannot be produced)";
        /// Successful offset commits.
        commits as commits: sum, metric "commits" "Offset commits that succeeded";
        /// Failed offset commits (each retried with the newest positions).
        commit_failures as commit_failures: sum, metric "commit_failures" "Offset commits that failed";
        /// Rebalances that assigned partitions to this member.
        assignments as assignments: sum, metric "rebalance_assignments" "Rebalances that assigned partitions";
        /// Rebalances that revoked partitions from this member.
        revocations as revocations: sum, metric "rebalance_revocations" "Rebalances that revoked partitions";
        /// Revokes whose commit of the finished prefix failed (the new owner
        /// then starts from an older commit: duplicates, never a skip).
        revoke_commit_failures as revoke_commit_failures: sum;
        /// The most messages ever read and not started at once, retries
        /// waiting for their backoff included (bounded by `max_buffered`).
        max_waiting as max_waiting: max;
        /// Times a partition was paused because its uncommitted window
        /// reached `max_uncommitted`.
        window_pauses as uncommitted_window_pauses: sum;
        /// Record batches librdkafka could not read (corrupt, or compressed
        /// with a codec it cannot decompress), each a failed message under
        /// the error policy.
        unreadable as records_unreadable: sum, metric "records_unreadable"
            "Record batches librdkafka could not read (corrupt or undecompressable), each failed under the error policy";
        /// Times the fetch was moved to find the end of an unreadable
        /// record batch (about `2 log2` of its length each).
        unreadable_probes as unreadable_fetch_moves: sum;
        /// Messages not handed to a handler because the commit metadata of
        /// their partition says they finished before (under an earlier
        /// assignment, or before a restart).
        already_done as skipped_already_done: sum, metric "messages_skipped_already_done"
            "Messages not handled because their partition's commit metadata says they finished before (earlier assignment or run)";
        /// Commits whose finished offsets did not all fit in the metadata
        /// size limit (a prefix of them was committed).
        metadata_truncated as commit_metadata_truncated: sum, metric "commit_metadata_truncated"
            "Commits whose finished offsets did not all fit in the metadata limit (a prefix was written)";
        /// Assigned partitions whose committed metadata was not kconc's, of
        /// another version, damaged, or written for another offset: nothing
        /// of them is skipped.
        metadata_rejected as commit_metadata_rejected: sum, metric "commit_metadata_rejected"
            "Assigned partitions whose committed metadata could not be used (another client's, another version, damaged)";
        /// Assigned partitions whose committed finished offsets were not
        /// used because the partition's offsets were reused since they
        /// were written (the topic deleted and created again, the log
        /// truncated below them, the position moved back): nothing of
        /// them is skipped.
        metadata_stale as commit_metadata_stale: sum, metric "commit_metadata_stale"
            "Partitions whose committed finished offsets were not used because the offsets were reused (topic recreated, log truncated, position moved back)";
        /// Times the broker refused the metadata's length (its
        /// `offset.metadata.max.bytes` is lower): commits go on without it.
        metadata_refused as commit_metadata_refused: sum;
        /// Times the broker refused the leader epoch a commit carried:
        /// commits go on without it.
        leader_epoch_refused as commit_leader_epoch_refused: sum;
        /// Commit requests made at once because partitions went idle (all
        /// read finished, nothing more fetched), before the batch or the
        /// interval was due.
        idle_commits as idle_commits: sum;
    }
    fields {
    /// Partitions that have been paused because their own buffer was full
    /// (`key` and `partition` ordering), by topic and partition. Written
    /// only when a partition pauses or resumes.
    pub pauses: Mutex<BTreeMap<(String, i32), PauseState>>,
    /// Partitions stopped by the error policy now: the offset and the error.
    pub stopped_partitions: Mutex<BTreeMap<(String, i32), (i64, String)>>,
    /// The topics it consumes, replies or dead-letters to that the cluster
    /// says do not exist (the app's
    /// topic watcher keeps it).
    pub missing_topics: Mutex<Vec<String>>,
    /// Partitions assigned to this member now.
    pub assigned: Mutex<BTreeSet<(String, i32)>>,
    /// Handlers running now.
    pub in_flight: AtomicU64,
    /// Messages read and waiting for a handler slot now.
    pub buffered: AtomicU64,
    /// The group has answered a join with an assignment (possibly empty).
    pub joined: AtomicBool,
    /// The poll thread runs (false once it has ended, normally or not).
    pub poll_alive: AtomicBool,
    /// The committer thread runs.
    pub committer_alive: AtomicBool,
    /// Shutdown has begun.
    pub closing: AtomicBool,
    /// Why the subscriber stopped on its own, if it did (a fatal consumer
    /// error, a thread of it that ended): not healthy from then on.
    pub stopped_because: Mutex<Option<String>>,
    /// Why the subscriber must stop, found outside its consumer: its
    /// brokers lack its group protocol (see `engine::protocol_probe`).
    pub must_stop: std::sync::OnceLock<String>,
    /// Why the subscriber's database (`store = "sql"`) cannot be used now,
    /// while it waits for it.
    pub store_waiting: Mutex<Option<String>>,
    /// When the poll loop last turned, in Unix milliseconds.
    pub last_poll_ms: AtomicU64,
    /// When a commit last succeeded, in Unix milliseconds (0: never).
    pub last_commit_ms: AtomicU64,
    /// Since when every commit has failed, in Unix milliseconds (0: the last succeeded).
    pub commit_failing_since_ms: AtomicU64,
    /// The last committed offset of each partition.
    pub committed: Mutex<BTreeMap<(String, i32), i64>>,
    /// The high watermark of each assigned partition, as last fetched.
    pub high_watermarks: Mutex<BTreeMap<(String, i32), i64>>,
    /// The first offset read in each partition's current assignment: where
    /// lag counts from until this member has committed the partition.
    pub fetch_starts: Mutex<BTreeMap<(String, i32), i64>>,
    /// How long handler calls take.
    pub handler_seconds: HandlerHistogram,
    /// How many messages each call of a batch handler got.
    pub batch_size: BatchHistogram,
    /// Calls of a batch handler running now.
    pub batches_in_flight: AtomicU64,
    /// The latest statistics librdkafka emitted for the consumer (JSON), when
    /// the `statistics.interval.ms` property is set.
    pub librdkafka_statistics: Mutex<Option<String>>,
    /// When the message in each worker place began, in Unix milliseconds
    /// (0: the place is free): the oldest is the oldest running handler.
    pub running_since: Mutex<Vec<Arc<AtomicU64>>>,
    /// Per assigned partition: when its committed offset last moved (or it
    /// was assigned), in Unix milliseconds, and whether messages wait
    /// behind that offset (read past it and not committed). Refreshed once
    /// a second.
    pub progress: Mutex<BTreeMap<(String, i32), (u64, bool)>>,
    }
}

/// A histogram with `COUNT` buckets doubling from `START_MILLIONTHS`
/// millionths of its unit.
#[derive(Debug, Clone)]
pub(crate) struct Doubling<const START_MILLIONTHS: u64, const COUNT: u16>(
    pub(crate) prometheus_client::metrics::histogram::Histogram,
);

impl<const START_MILLIONTHS: u64, const COUNT: u16> Default for Doubling<START_MILLIONTHS, COUNT> {
    fn default() -> Self {
        Self(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(START_MILLIONTHS as f64 / 1e6, 2.0, COUNT),
        ))
    }
}

/// The handler duration histogram (seconds: buckets from 0.5 ms to about 16 s).
pub(crate) type HandlerHistogram = Doubling<500, 16>;

/// The batch size histogram (messages: buckets 1, 2, 4, .. 1024).
pub(crate) type BatchHistogram = Doubling<1_000_000, 11>;

/// Clears a liveness flag of [`Stats`] when dropped.
pub(crate) struct AliveGuard {
    stats: Arc<Stats>,
    flag: fn(&Stats) -> &AtomicBool,
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        (self.flag)(&self.stats).store(false, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A partition stopped by `on_error = stop`: nothing at or after `offset`
/// is handled or committed until it is reassigned or the program restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoppedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the message that failed its last attempt (-1: stopped
    /// before its first message, because its messages cannot be read
    /// apart from the consumer's).
    pub offset: i64,
    /// Why: the last attempt's error.
    pub reason: String,
}

/// Whether a partition is paused now, and how often it has been.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PauseState {
    pub paused: bool,
    pub times: u64,
}

/// A partition that has been paused by backpressure: its messages waiting
/// behind busy keys (or behind its running message, in `partition`
/// ordering) reached its share of `max_buffered`, so it was not read until
/// they drained. Other partitions are read meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionPause {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Paused right now.
    pub paused: bool,
    /// How many times it has been paused.
    pub times: u64,
}

impl Stats {
    /// Records why the database cannot be used now (`None`: it can).
    pub(crate) fn set_store_waiting(&self, why: Option<String>) {
        if let Ok(mut w) = self.store_waiting.lock() {
            *w = why;
        }
    }

    /// Records that a partition paused (`paused`) or resumed.
    pub(crate) fn set_paused(&self, topic: &str, partition: i32, paused: bool) {
        let Ok(mut map) = self.pauses.lock() else { return };
        let state = map.entry((topic.to_owned(), partition)).or_default();
        if paused && !state.paused {
            state.times += 1;
        }
        state.paused = paused;
    }

    /// Records that a partition was assigned (`true`) or revoked.
    pub(crate) fn set_assigned(&self, topic: &str, partition: i32, assigned: bool) {
        let Ok(mut set) = self.assigned.lock() else { return };
        if assigned {
            set.insert((topic.to_owned(), partition));
        } else {
            set.remove(&(topic.to_owned(), partition));
        }
    }

    /// Drops a revoked partition's committed offset and high watermark: its
    /// lag is the new owner's to report.
    pub(crate) fn forget_partition(&self, topic: &str, partition: i32) {
        let key = (topic.to_owned(), partition);
        if let Ok(mut m) = self.committed.lock() {
            m.remove(&key);
        }
        if let Ok(mut m) = self.high_watermarks.lock() {
            m.remove(&key);
        }
        if let Ok(mut m) = self.fetch_starts.lock() {
            m.remove(&key);
        }
    }

    /// Records the first offset read in a partition's assignment.
    pub(crate) fn set_fetch_start(&self, topic: &str, partition: i32, offset: i64) {
        if let Ok(mut m) = self.fetch_starts.lock() {
            m.insert((topic.to_owned(), partition), offset);
        }
    }

    /// The partitions assigned now, sorted by topic and partition.
    pub(crate) fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records (or, with `None`, clears) a stopped partition.
    pub(crate) fn set_stopped(&self, topic: &str, partition: i32, stopped: Option<(i64, String)>) {
        let Ok(mut map) = self.stopped_partitions.lock() else {
            return;
        };
        match stopped {
            // Nothing at or after the first stopped offset is committed:
            // a later failure of the same partition does not move it.
            Some(s) => match map.entry((topic.to_owned(), partition)) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(s);
                }
                std::collections::btree_map::Entry::Occupied(mut e) if s.0 < e.get().0 => {
                    e.insert(s);
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            },
            None => {
                map.remove(&(topic.to_owned(), partition));
            }
        }
    }

    /// The partitions stopped by the error policy now.
    pub(crate) fn stopped_partitions(&self) -> Vec<StoppedPartition> {
        let Ok(map) = self.stopped_partitions.lock() else {
            return Vec::new();
        };
        map.iter()
            .map(|((topic, partition), (offset, reason))| StoppedPartition {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                reason: reason.clone(),
            })
            .collect()
    }

    /// How long the oldest message in a worker now has been there (its
    /// handler running, or its dead letter being produced), if any is.
    pub(crate) fn oldest_running(&self) -> Option<std::time::Duration> {
        let since = self.running_since.lock().ok()?;
        let oldest = since
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&ms| ms > 0)
            .min()?;
        Some(std::time::Duration::from_millis(unix_ms().saturating_sub(oldest)))
    }

    /// Every partition that has ever been paused.
    pub(crate) fn pauses(&self) -> Vec<PartitionPause> {
        let Ok(map) = self.pauses.lock() else { return Vec::new() };
        map.iter()
            .map(|((topic, partition), s)| PartitionPause {
                topic: topic.clone(),
                partition: *partition,
                paused: s.paused,
                times: s.times,
            })
            .collect()
    }

    /// Sets `flag` while this guard lives and clears it when dropped,
    /// however the thread holding it ends (a panic included).
    pub(crate) fn alive_while(self: &Arc<Self>, flag: fn(&Self) -> &AtomicBool) -> AliveGuard {
        flag(self).store(true, Ordering::Relaxed);
        AliveGuard {
            stats: self.clone(),
            flag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter exposed in `/metrics` is named in the README's list,
    /// where `kconc_messages_{a,b}_total` names two.
    #[test]
    fn the_readme_names_every_counter_metric() {
        let readme = include_str!("../../README.md");
        let mut named = Vec::new();
        for word in readme.split(|c: char| c == '`' || c.is_whitespace()) {
            let Some(word) = word.strip_prefix("kconc_") else {
                continue;
            };
            match (word.find('{'), word.find('}')) {
                (Some(open), Some(close)) if open < close => {
                    for part in word[open + 1..close].split(',') {
                        named.push(format!("{}{part}{}", &word[..open], &word[close + 1..]));
                    }
                }
                _ => named.push(word.to_owned()),
            }
        }
        for (name, _, _) in COUNTER_METRICS {
            let metric = format!("{name}_total");
            assert!(named.contains(&metric), "the README does not name kconc_{metric}");
        }
    }

    /// Under `on_error = stop`, a second failure of a stopped partition (a
    /// later offset, unordered) does not move the offset health reports:
    /// nothing at or after the first is committed.
    #[test]
    fn a_stopped_partition_keeps_its_first_stopped_offset() {
        let stats = Stats::default();
        stats.set_stopped("t", 0, Some((7, "first".into())));
        stats.set_stopped("t", 0, Some((9, "second".into())));
        let stopped = stats.stopped_partitions();
        assert_eq!((stopped[0].offset, stopped[0].reason.as_str()), (7, "first"));
        stats.set_stopped("t", 0, Some((5, "earlier".into())));
        assert_eq!(stats.stopped_partitions()[0].offset, 5);
        stats.set_stopped("t", 0, None);
        assert!(stats.stopped_partitions().is_empty());
    }
}

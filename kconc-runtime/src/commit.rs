//! Commits: the one place offsets are written to the broker.
//!
//! A dedicated thread takes the positions the poll loop wants committed,
//! coalesces them (only the newest position per partition matters), and
//! commits synchronously, one commit at a time, so that a slow or failing
//! commit never stalls polling and two commits can never overtake each other.
//! Within one assignment of a partition (an *epoch*) the committed position
//! only moves forward; a failed commit is retried with the newest position,
//! never with the stale one that failed.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::consumer::KconcContext;
use crate::dispatch::Stats;

/// A partition in one assignment: the same partition assigned again later is
/// a new epoch and starts its committed position afresh.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartitionKey {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
}

/// What the poll loop asks of the committer.
#[derive(Debug)]
pub(crate) enum CommitRequest {
    /// Commit these positions (partition, epoch, next offset to read).
    Positions(Vec<(PartitionKey, u64, i64)>),
    /// Forget these partitions without committing (their assignment was
    /// lost: the member is no longer in the group, a commit would fail).
    Forget(Vec<PartitionKey>),
    /// Commit now, reply with the outcome, then forget `forget` (revoked partitions).
    Flush {
        forget: Vec<PartitionKey>,
        reply: Sender<Result<(), KafkaError>>,
    },
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    wanted: i64,
    committed: Option<i64>,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Handle to the committer thread. Dropping the sender side stops it.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Sender<CommitRequest>,
    thread: JoinHandle<()>,
}

impl Committer {
    pub(crate) fn spawn(
        name: &str,
        group: String,
        consumer: Arc<BaseConsumer<KconcContext>>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("kconc-commit-{name}"))
            .spawn(move || {
                let _alive = stats.alive_while(|s| &s.committer_alive);
                run(&rx, &group, &consumer, &stats);
            })?;
        Ok(Self { tx, thread })
    }

    pub(crate) fn request(&self, req: CommitRequest) {
        // The thread only ends when this handle drops, so a send cannot fail
        // while it is alive; if it did, the offsets stay uncommitted (safe).
        let _ = self.tx.send(req);
    }

    /// Commits everything asked so far and waits (up to `timeout`) for the result.
    pub(crate) fn flush(&self, forget: Vec<PartitionKey>, timeout: Duration) -> Result<(), FlushError> {
        let (reply, rx) = mpsc::channel();
        self.request(CommitRequest::Flush { forget, reply });
        match rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FlushError::Kafka(e)),
            Err(_) => Err(FlushError::TimedOut),
        }
    }

    /// Stops the thread after it has served every request sent so far.
    pub(crate) fn stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("the commit did not finish in time")]
    TimedOut,
}

fn run(rx: &Receiver<CommitRequest>, group: &str, consumer: &BaseConsumer<KconcContext>, stats: &Stats) {
    let mut entries: HashMap<PartitionKey, Entry> = HashMap::new();
    // The newest epoch forgotten per partition: a request from that epoch or
    // an older one must never bring the partition back.
    let mut forgotten: HashMap<PartitionKey, u64> = HashMap::new();
    let mut retry_at: Option<Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let first = match retry_at {
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            },
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut waiters = Vec::new();
        let mut forget = Vec::new();
        for req in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match req {
                CommitRequest::Positions(ps) => {
                    for (key, epoch, offset) in ps {
                        if forgotten.get(&key).is_some_and(|&f| epoch <= f) {
                            continue;
                        }
                        merge(&mut entries, key, epoch, offset);
                    }
                }
                CommitRequest::Forget(keys) => {
                    for key in keys {
                        if let Some(e) = entries.remove(&key) {
                            forgotten.insert(key, e.epoch);
                        }
                    }
                }
                CommitRequest::Flush { forget: f, reply } => {
                    forget.extend(f);
                    waiters.push(reply);
                }
            }
        }
        let result = commit_wanted(&mut entries, group, consumer, stats);
        match &result {
            Ok(()) => {
                retry_at = None;
                backoff = RETRY_MIN;
            }
            Err(_) => {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        for key in forget {
            if let Some(e) = entries.remove(&key) {
                forgotten.insert(key, e.epoch);
            }
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn merge(entries: &mut HashMap<PartitionKey, Entry>, key: PartitionKey, epoch: u64, offset: i64) {
    match entries.get_mut(&key) {
        Some(e) if e.epoch == epoch => e.wanted = e.wanted.max(offset),
        Some(e) if e.epoch > epoch => {} // a request from an older assignment: ignore
        _ => {
            entries.insert(
                key,
                Entry {
                    epoch,
                    wanted: offset,
                    committed: None,
                },
            );
        }
    }
}

fn commit_wanted(
    entries: &mut HashMap<PartitionKey, Entry>,
    group: &str,
    consumer: &BaseConsumer<KconcContext>,
    stats: &Stats,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    let mut sent = Vec::new();
    for (key, e) in entries.iter() {
        if e.committed.is_none_or(|c| e.wanted > c) {
            tpl.add_partition_offset(&key.topic, key.partition, Offset::Offset(e.wanted))?;
            sent.push((key.clone(), e.wanted));
        }
    }
    if sent.is_empty() {
        return Ok(());
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .last_commit_ms
                .store(crate::dispatch::unix_ms(), std::sync::atomic::Ordering::Relaxed);
            stats
                .commit_failing_since_ms
                .store(0, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut committed) = stats.committed.lock() {
                for (key, offset) in &sent {
                    committed.insert((key.topic.to_string(), key.partition), *offset);
                }
            }
            for (key, offset) in sent {
                if let Some(e) = entries.get_mut(&key) {
                    e.committed = Some(e.committed.map_or(offset, |c| c.max(offset)));
                }
            }
            tracing::debug!(group, partitions = tpl.count(), "committed offsets");
            Ok(())
        }
        Err(e) => {
            stats.commit_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stats.commit_failing_since_ms.compare_exchange(
                0,
                crate::dispatch::unix_ms(),
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(group, error = %e, partitions = tpl.count(), "offset commit failed; will retry with the newest positions");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    #[test]
    fn merge_keeps_the_highest_position_of_an_epoch() {
        let mut m = HashMap::new();
        merge(&mut m, key(0), 1, 10);
        merge(&mut m, key(0), 1, 5);
        assert_eq!(m[&key(0)].wanted, 10);
        merge(&mut m, key(0), 1, 12);
        assert_eq!(m[&key(0)].wanted, 12);
    }

    #[test]
    fn merge_starts_afresh_for_a_new_epoch_and_ignores_an_old_one() {
        let mut m = HashMap::new();
        merge(&mut m, key(0), 1, 10);
        m.get_mut(&key(0)).unwrap().committed = Some(10);
        merge(&mut m, key(0), 2, 4);
        assert_eq!((m[&key(0)].wanted, m[&key(0)].committed), (4, None));
        merge(&mut m, key(0), 1, 50);
        assert_eq!(m[&key(0)].wanted, 4);
    }
}

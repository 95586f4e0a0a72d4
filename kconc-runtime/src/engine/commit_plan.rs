//! When and what to commit: after `commit_batch_size` finished messages or
//! every `commit_interval`; a partition that went idle at once (bounded to
//! one request per [`IDLE_COMMIT_GAP`] or tenth of the interval); a
//! partition held by its uncommitted window at once; a revoke's and the
//! shutdown's partitions when they say so. What: each partition's
//! position, if it moved since it was last asked for, with its commit
//! metadata (see `Partitions::wanted`). The committer thread does the rest.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::commit::Wanted;
use super::partitions::Partitions;
use crate::stats::Stats;

/// Idle commits are asked for at most this often (each request covers every
/// partition idle by then), or every tenth of `commit_interval` if that is
/// shorter: at a low rate, where each record comes in a fetch of its own
/// (as Kafka's long poll answers), every message would otherwise make its
/// own OffsetCommit.
pub(super) const IDLE_COMMIT_GAP: Duration = Duration::from_millis(100);

/// The commit settings, and what happened since the last commit.
#[derive(Debug)]
pub(super) struct CommitPlan {
    batch_size: usize,
    interval: Duration,
    /// Commit the finished offsets above each position in its metadata.
    metadata: bool,
    /// Messages finished since the last commit.
    finished: usize,
    last_commit: Instant,
    /// When idle partitions were last asked to be committed.
    last_idle_commit: Option<Instant>,
}

impl CommitPlan {
    pub(super) fn new(batch_size: usize, interval: Duration, metadata: bool) -> Self {
        CommitPlan {
            batch_size,
            interval,
            metadata,
            finished: 0,
            last_commit: Instant::now(),
            last_idle_commit: None,
        }
    }

    /// Whether commits carry the finished offsets above them.
    pub(super) fn metadata(&self) -> bool {
        self.metadata
    }

    /// A message finished (handled, given up, or finished before).
    pub(super) fn finished(&mut self) {
        self.finished += 1;
    }

    /// The positions of `parts` to ask for now (see `Partitions::wanted`).
    pub(super) fn positions(&self, parts: &mut Partitions, which: &[(usize, i32)], stats: &Stats) -> Vec<Wanted> {
        let mut out = Vec::new();
        for &(t, p) in which {
            if let Some((wanted, truncated)) = parts.wanted(t, p, self.metadata) {
                if truncated {
                    stats.metadata_truncated.fetch_add(1, Ordering::Relaxed);
                }
                out.push(wanted);
            }
        }
        out
    }

    /// Every partition's position to commit, if a commit is due (after
    /// `commit_batch_size` finished, or `commit_interval` with something
    /// finished) or `force`d; it then counts as made.
    pub(super) fn due(&mut self, force: bool, parts: &mut Partitions, stats: &Stats) -> Option<Vec<Wanted>> {
        let due =
            self.finished >= self.batch_size || (self.finished > 0 && self.last_commit.elapsed() >= self.interval);
        if !(due || force) {
            return None;
        }
        let all = parts.all();
        let positions = self.positions(parts, &all, stats);
        self.finished = 0;
        self.last_commit = Instant::now();
        (!positions.is_empty()).then_some(positions)
    }

    /// The positions of the partitions of `order` that went idle (see
    /// `Partitions::idle`), when something finished since the last commit
    /// and the last idle request is at least the gap ago: a crash after a
    /// backlog drains then redelivers nothing of them.
    pub(super) fn idle(
        &mut self,
        parts: &mut Partitions,
        order: &[(usize, i32)],
        stats: &Stats,
    ) -> Option<Vec<Wanted>> {
        if self.finished == 0 {
            return None;
        }
        let gap = (self.interval / 10).min(IDLE_COMMIT_GAP);
        if self.last_idle_commit.is_some_and(|at| at.elapsed() < gap) {
            return None;
        }
        let idle: Vec<(usize, i32)> = order.iter().copied().filter(|&(t, p)| parts.idle(t, p)).collect();
        if idle.is_empty() {
            return None;
        }
        let positions = self.positions(parts, &idle, stats);
        if positions.is_empty() {
            return None;
        }
        self.last_idle_commit = Some(Instant::now());
        stats.idle_commits.fetch_add(1, Ordering::Relaxed);
        Some(positions)
    }
}

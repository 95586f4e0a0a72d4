//! When and what to commit: after `commit_batch_size` finished messages or
//! every `commit_interval`; a partition that went idle at once (bounded to
//! one request per [`IDLE_COMMIT_GAP`] or tenth of the interval); a
//! partition held by its uncommitted window at once; a revoke's and the
//! shutdown's partitions when they say so. What: each partition's
//! position, if it moved since it was last asked for, with its commit
//! metadata (see `Partitions::wanted`). The committer thread does the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::commit::Wanted;
use super::partitions::Partitions;
use super::spares::Spares;
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
    /// The partitions a commit looks at, reused.
    scratch: Vec<(usize, i32)>,
    /// Emptied vectors of positions, back from the committer.
    spares: Arc<Spares<Wanted>>,
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
            scratch: Vec::new(),
            spares: Arc::default(),
        }
    }

    /// Takes the vectors of its requests from `spares` (the committer's).
    pub(super) fn with_spares(mut self, spares: Arc<Spares<Wanted>>) -> Self {
        self.spares = spares;
        self
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
        let mut out = self.spares.take();
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
        parts.all_into(&mut self.scratch);
        let positions = self.positions(parts, &self.scratch, stats);
        self.finished = 0;
        self.last_commit = Instant::now();
        self.unless_empty(positions)
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
        self.scratch.clear();
        self.scratch
            .extend(order.iter().copied().filter(|&(t, p)| parts.idle(t, p)));
        if self.scratch.is_empty() {
            return None;
        }
        let positions = self.positions(parts, &self.scratch, stats);
        let positions = self.unless_empty(positions)?;
        self.last_idle_commit = Some(Instant::now());
        stats.idle_commits.fetch_add(1, Ordering::Relaxed);
        Some(positions)
    }

    /// `positions`, or none if it is empty (its vector kept for the next).
    fn unless_empty(&self, positions: Vec<Wanted>) -> Option<Vec<Wanted>> {
        if positions.is_empty() {
            self.spares.put(positions);
            None
        } else {
            Some(positions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition 0 of topic 0 assigned, offsets `0..n` read.
    fn read(n: i64) -> Partitions {
        let mut parts = Partitions::default();
        let t = parts.topic("t");
        parts.assign(t, 0, None);
        for o in 0..n {
            let _ = parts.read(t, 0, o, 0);
        }
        parts
    }

    #[test]
    fn a_commit_is_due_at_the_batch_size_or_the_interval_or_when_forced() {
        let stats = Stats::default();
        let mut parts = read(3);
        let mut plan = CommitPlan::new(2, Duration::from_secs(3600), false);
        assert!(plan.due(false, &mut parts, &stats).is_none(), "nothing finished");
        parts.finish(0, 0, 0);
        plan.finished();
        assert!(plan.due(false, &mut parts, &stats).is_none(), "1 of 2");
        parts.finish(0, 0, 1);
        plan.finished();
        let w = plan.due(false, &mut parts, &stats).unwrap();
        assert_eq!(w.iter().map(|w| w.offset).collect::<Vec<_>>(), [2]);
        assert!(plan.due(false, &mut parts, &stats).is_none(), "counted as made");
        assert!(
            plan.due(true, &mut parts, &stats).is_none(),
            "forced, but nothing moved"
        );
        parts.finish(0, 0, 2);
        assert_eq!(plan.due(true, &mut parts, &stats).map(|w| w[0].offset), Some(3));

        // Several finished count up: two of a batch of three is not due.
        let mut parts = read(3);
        let mut plan = CommitPlan::new(3, Duration::from_secs(3600), false);
        for o in 0..2 {
            parts.finish(0, 0, o);
            plan.finished();
        }
        assert!(plan.due(false, &mut parts, &stats).is_none(), "2 of 3");
        parts.finish(0, 0, 2);
        plan.finished();
        assert!(plan.due(false, &mut parts, &stats).is_some(), "3 of 3");

        // At the interval, with something finished.
        let mut parts = read(2);
        let mut plan = CommitPlan::new(100, Duration::ZERO, true);
        assert!(plan.metadata());
        assert!(plan.due(false, &mut parts, &stats).is_none(), "nothing finished");
        parts.finish(0, 0, 1);
        plan.finished();
        let w = plan.due(false, &mut parts, &stats).unwrap();
        assert_eq!((w[0].offset, w[0].metadata.is_some()), (0, true), "1 finished above 0");
        assert!(!CommitPlan::new(100, Duration::from_secs(1), false).metadata());
    }

    #[test]
    fn positions_count_metadata_cut_short() {
        let stats = Stats::default();
        let mut parts = read(0);
        // Every other offset finished, far more than 4 KiB of metadata holds.
        let n = 200_000;
        for o in 0..n {
            let _ = parts.read(0, 0, o, 0);
            if o % 2 == 1 {
                parts.finish(0, 0, o);
            }
        }
        let plan = CommitPlan::new(1, Duration::from_secs(1), true);
        let w = plan.positions(&mut parts, &[(0, 0), (0, 7)], &stats);
        assert_eq!(w.len(), 1, "partition 7 is not assigned");
        assert_eq!(stats.metadata_truncated.load(Ordering::Relaxed), 1);
        let plan = CommitPlan::new(1, Duration::from_secs(1), false);
        parts.finish(0, 0, 0);
        let w = plan.positions(&mut parts, &[(0, 0)], &stats);
        assert_eq!(
            (w[0].offset, stats.metadata_truncated.load(Ordering::Relaxed)),
            (2, 1),
            "0 and 1 finished"
        );
    }

    #[test]
    fn idle_commits_need_something_finished_and_keep_their_gap() {
        let stats = Stats::default();
        let mut parts = read(1);
        let mut plan = CommitPlan::new(100, Duration::from_secs(1), false);
        parts.finish(0, 0, 0);
        assert!(
            plan.idle(&mut parts, &[(0, 0)], &stats).is_none(),
            "nothing counted finished"
        );
        plan.finished();
        assert!(plan.idle(&mut parts, &[], &stats).is_none(), "no partition given");
        let w = plan.idle(&mut parts, &[(0, 0)], &stats).unwrap();
        assert_eq!((w.len(), w[0].offset), (1, 1));
        assert_eq!(stats.idle_commits.load(Ordering::Relaxed), 1);
        // Within the gap (a tenth of the interval, at most 100 ms), no more;
        // once it has passed, again.
        let _ = parts.read(0, 0, 1, 0);
        parts.finish(0, 0, 1);
        plan.last_idle_commit = Some(Instant::now() + Duration::from_secs(3600));
        assert!(plan.idle(&mut parts, &[(0, 0)], &stats).is_none(), "within the gap");
        plan.last_idle_commit = Instant::now().checked_sub(IDLE_COMMIT_GAP);
        assert!(plan.idle(&mut parts, &[(0, 0)], &stats).is_some(), "the gap has passed");
        // With no gap: at once; and never twice for the same position.
        let mut plan = CommitPlan::new(100, Duration::ZERO, false);
        plan.finished();
        let _ = parts.read(0, 0, 2, 0);
        parts.finish(0, 0, 2);
        assert_eq!(plan.idle(&mut parts, &[(0, 0)], &stats).map(|w| w[0].offset), Some(3));
        assert!(plan.idle(&mut parts, &[(0, 0)], &stats).is_none(), "asked for already");
        assert_eq!(stats.idle_commits.load(Ordering::Relaxed), 3);
        // A commit that is due resets what finished: nothing idle to ask.
        let mut plan = CommitPlan::new(1, Duration::from_secs(3600), false);
        plan.finished();
        let _ = plan.due(false, &mut parts, &stats);
        let _ = parts.read(0, 0, 3, 0);
        parts.finish(0, 0, 3);
        assert!(plan.idle(&mut parts, &[(0, 0)], &stats).is_none());
    }

    /// The interval makes a commit due only when something finished since
    /// the last one (as the plan counts); the idle gap is a tenth of a
    /// short interval.
    #[test]
    fn the_interval_needs_a_finish_and_the_idle_gap_follows_a_short_interval() {
        let stats = Stats::default();
        let mut parts = read(2);
        let mut plan = CommitPlan::new(100, Duration::ZERO, false);
        parts.finish(0, 0, 0); // not counted by the plan
        assert!(plan.due(false, &mut parts, &stats).is_none());
        plan.finished();
        assert!(plan.due(false, &mut parts, &stats).is_some());
        // A 1 ms interval: a gap of 0.1 ms, long past 1 ms after the last.
        let mut plan = CommitPlan::new(100, Duration::from_millis(1), false);
        plan.finished();
        plan.last_idle_commit = Instant::now().checked_sub(Duration::from_millis(1));
        parts.finish(0, 0, 1);
        assert!(plan.idle(&mut parts, &[(0, 0)], &stats).is_some());
    }
}

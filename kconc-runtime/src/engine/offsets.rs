//! Offsets: which offsets of one partition have finished, and how far the
//! contiguous finished prefix reaches (the position that is safe to commit).

use std::collections::VecDeque;

/// Tracks one partition within one assignment.
///
/// Offsets are dispatched in increasing order (not necessarily contiguous:
/// compaction and transaction markers leave gaps) and finish in any order.
/// The committable position is one past the last offset of the longest
/// finished prefix of what was dispatched; it only ever moves forward.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Dispatched offsets at or after the first unfinished one, with a flag
    /// saying whether each has finished. Sorted by offset.
    pending: VecDeque<(i64, bool)>,
    /// One past the last offset of the finished prefix, once there is one.
    position: Option<i64>,
    /// The first offset dispatched in this assignment.
    first_dispatched: Option<i64>,
    /// The highest offset dispatched so far.
    last_dispatched: Option<i64>,
    /// How many of `pending` have finished (above the finished prefix).
    finished_above: usize,
}

impl OffsetTracker {
    /// Records that `offset` was handed to a handler. Returns `false` (and
    /// records nothing) for an offset at or below one already dispatched,
    /// which is a redelivery the tracker already covers.
    pub(crate) fn dispatched(&mut self, offset: i64) -> bool {
        if self.last_dispatched.is_some_and(|last| offset <= last) {
            return false;
        }
        self.last_dispatched = Some(offset);
        self.first_dispatched.get_or_insert(offset);
        self.pending.push_back((offset, false));
        true
    }

    /// How many offsets have been dispatched past `committed` (the
    /// position last committed in this assignment; before any, the first
    /// offset dispatched): the partition's uncommitted window, counted in
    /// offsets (gaps included, so it never undercounts).
    pub(crate) fn window(&self, committed: Option<i64>) -> u64 {
        let (Some(last), Some(first)) = (self.last_dispatched, self.first_dispatched) else {
            return 0;
        };
        let from = committed.unwrap_or(first);
        u64::try_from(last + 1 - from).unwrap_or(0)
    }

    /// The highest offset dispatched in this assignment, if any.
    pub(crate) fn last_dispatched(&self) -> Option<i64> {
        self.last_dispatched
    }

    /// Whether nothing has been dispatched in this assignment yet.
    pub(crate) fn is_untouched(&self) -> bool {
        self.last_dispatched.is_none()
    }

    /// Records that `offset` finished (handled, or given up on by the error
    /// policy). Returns `true` if the committable position moved.
    pub(crate) fn finished(&mut self, offset: i64) -> bool {
        let Some(idx) = self.index_of(offset) else {
            return false;
        };
        if std::mem::replace(&mut self.pending[idx].1, true) {
            return false;
        }
        if idx != 0 {
            self.finished_above += 1;
            return false;
        }
        self.pending.pop_front();
        self.position = Some(offset + 1);
        while let Some(&(o, true)) = self.pending.front() {
            self.position = Some(o + 1);
            self.finished_above -= 1;
            self.pending.pop_front();
        }
        true
    }

    /// Where `offset` is in `pending`, if it is there. Offsets increase
    /// along `pending`, so an offset's place is at most its distance from
    /// the front, and exactly that where no gap lies before it (the usual
    /// case, looked at first); otherwise it is searched for.
    fn index_of(&self, offset: i64) -> Option<usize> {
        let &(front, _) = self.pending.front()?;
        let guess = usize::try_from(offset.checked_sub(front)?).ok()?;
        if self.pending.get(guess).is_some_and(|&(o, _)| o == offset) {
            return Some(guess);
        }
        self.pending.binary_search_by_key(&offset, |&(o, _)| o).ok()
    }

    /// Whether everything dispatched has finished.
    pub(crate) fn is_settled(&self) -> bool {
        self.pending.is_empty()
    }

    /// How many offsets above the finished prefix have finished.
    pub(crate) fn finished_above(&self) -> usize {
        self.finished_above
    }

    /// The offset to commit with the finished offsets above it: one past
    /// the finished prefix, or, before any prefix finished, the first offset
    /// dispatched (where this assignment started reading), if anything
    /// above it finished.
    pub(crate) fn commit_point(&self) -> Option<i64> {
        self.position.or_else(|| {
            (self.finished_above > 0)
                .then(|| self.pending.front().map(|&(o, _)| o))
                .flatten()
        })
    }

    /// The finished offsets above the finished prefix, in order.
    pub(crate) fn finished_set(&self) -> impl Iterator<Item = i64> + '_ {
        self.pending.iter().filter(|(_, done)| *done).map(|&(o, _)| o)
    }

    /// The lowest dispatched offset that has not finished, if any.
    pub(crate) fn first_unfinished(&self) -> Option<i64> {
        self.pending.front().map(|&(o, _)| o)
    }

    /// The offset to commit: one past the finished prefix, if any finished.
    pub(crate) fn committable(&self) -> Option<i64> {
        self.position
    }

    /// How many dispatched offsets are not yet part of the finished prefix.
    #[cfg(test)]
    pub(crate) fn unfinished_window(&self) -> usize {
        self.pending.len()
    }
}

/// The leader epoch (KIP-320) of one partition's records as they are
/// read, kept only where it changes: what a commit of a position carries
/// (the epoch of the record before it), so that librdkafka can validate the
/// position against the log after a leader change.
#[derive(Debug, Default)]
pub(crate) struct LeaderEpochs {
    /// (first offset read with it, epoch), in offset order.
    changes: VecDeque<(i64, i32)>,
}

impl LeaderEpochs {
    /// Records that the record at `offset` (above all recorded so far) was
    /// written in leader epoch `epoch` (-1: the record does not say).
    pub(crate) fn read(&mut self, offset: i64, epoch: i32) {
        if self.changes.back().is_none_or(|&(_, e)| e != epoch) {
            self.changes.push_back((offset, epoch));
        }
    }

    /// The leader epoch of the record before position `pos` (-1 when not
    /// known), forgetting the changes below it: positions asked for only
    /// move forward.
    pub(crate) fn before(&mut self, pos: i64) -> i32 {
        while self.changes.get(1).is_some_and(|&(o, _)| o < pos) {
            self.changes.pop_front();
        }
        match self.changes.front() {
            Some(&(o, e)) if o < pos => e,
            _ => -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LeaderEpochs, OffsetTracker};

    #[test]
    fn a_position_carries_the_epoch_of_the_record_before_it() {
        let mut e = LeaderEpochs::default();
        assert_eq!(e.before(5), -1, "nothing read");
        for o in 10..20 {
            e.read(o, 3);
        }
        for o in 20..25 {
            e.read(o, 4);
        }
        assert_eq!(e.changes.len(), 2, "only the changes are kept");
        assert_eq!(e.before(10), -1, "the record before 10 was not read here");
        assert_eq!(e.before(11), 3);
        assert_eq!(e.before(20), 3);
        assert_eq!(e.before(21), 4);
        assert_eq!(e.changes.len(), 1, "what is below the position is forgotten");
        assert_eq!(e.before(100), 4);
    }

    #[test]
    fn position_stops_at_first_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            assert!(t.dispatched(o));
        }
        assert_eq!(t.committable(), None);
        assert!(!t.finished(11));
        assert!(!t.finished(12));
        assert_eq!(t.committable(), None, "10 is still running");
        assert!(t.finished(10));
        assert_eq!(t.committable(), Some(13));
        assert!(!t.finished(14), "13 is still running");
        assert_eq!(t.committable(), Some(13), "13 is still running");
        assert_eq!(t.finished_above(), 1, "14");
        assert!(t.finished(13));
        assert_eq!(t.committable(), Some(15));
        assert_eq!(t.unfinished_window(), 0);
        assert_eq!(t.finished_above(), 0);
    }

    #[test]
    fn the_window_counts_from_the_committed_position_or_the_first_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.window(None), 0);
        for o in 100..110 {
            t.dispatched(o);
        }
        assert_eq!(t.window(None), 10, "nothing committed: from the first offset read");
        t.finished(100);
        assert_eq!(t.window(None), 10, "finishing does not shrink it: committing does");
        assert_eq!(t.window(Some(101)), 9);
        assert_eq!(t.window(Some(110)), 0);
    }

    /// Before any prefix finished, the commit point is where reading
    /// started, once something above it finished; the finished set is what
    /// finished above the prefix.
    #[test]
    fn finished_offsets_above_an_unfinished_head() {
        let mut t = OffsetTracker::default();
        for o in [10, 11, 13, 14] {
            t.dispatched(o);
        }
        assert_eq!(t.commit_point(), None, "nothing finished");
        t.finished(13);
        t.finished(13);
        assert_eq!((t.committable(), t.commit_point()), (None, Some(10)));
        assert_eq!(t.finished_set().collect::<Vec<_>>(), vec![13]);
        assert_eq!(t.finished_above(), 1, "finishing twice counts once");
        t.finished(10);
        assert_eq!(t.commit_point(), Some(11));
        assert_eq!(t.finished_set().collect::<Vec<_>>(), vec![13]);
        t.finished(11);
        assert_eq!((t.commit_point(), t.finished_above()), (Some(14), 0));
    }

    #[test]
    fn gaps_in_offsets_do_not_block_the_prefix() {
        let mut t = OffsetTracker::default();
        for o in [3, 7, 8, 20] {
            t.dispatched(o);
        }
        t.finished(7);
        t.finished(3);
        assert_eq!(t.committable(), Some(8));
        t.finished(20);
        t.finished(8);
        assert_eq!(t.committable(), Some(21));
    }

    #[test]
    fn redelivered_or_unknown_offsets_are_ignored() {
        let mut t = OffsetTracker::default();
        t.dispatched(5);
        assert!(!t.dispatched(5));
        assert!(!t.dispatched(4));
        assert!(!t.finished(99));
        t.finished(5);
        assert!(!t.finished(5));
        assert_eq!(t.committable(), Some(6));
    }

    #[test]
    fn position_never_moves_backwards_under_any_finish_order() {
        // Every permutation of finishing 6 offsets.
        fn permutations(v: Vec<i64>) -> Vec<Vec<i64>> {
            if v.len() <= 1 {
                return vec![v];
            }
            let mut out = Vec::new();
            for i in 0..v.len() {
                let mut rest = v.clone();
                let x = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, x);
                    out.push(p);
                }
            }
            out
        }
        for order in permutations((0..6).collect()) {
            let mut t = OffsetTracker::default();
            (0..6).for_each(|o| {
                t.dispatched(o);
            });
            let mut last = None;
            let mut done = [false; 6];
            for o in order {
                t.finished(o);
                done[o as usize] = true;
                let prefix = done.iter().take_while(|d| **d).count() as i64;
                let expect = (prefix > 0).then_some(prefix);
                assert_eq!(t.committable(), expect);
                assert!(t.committable() >= last);
                last = t.committable();
            }
        }
    }

    #[test]
    fn an_offset_is_found_where_it_is_with_or_without_gaps_before_it() {
        // Every way of leaving gaps in 0..8, each queried from -2 to 10,
        // with the front moved on by finished prefixes too.
        for gaps in 0u32..256 {
            let offsets: Vec<i64> = (0..8).filter(|o| gaps & (1 << o) == 0).collect();
            let mut t = OffsetTracker::default();
            for &o in &offsets {
                t.dispatched(o);
            }
            for finished in 0..=offsets.len() {
                if finished > 0 {
                    t.finished(offsets[finished - 1]);
                }
                for q in -2..10 {
                    let searched = t.pending.binary_search_by_key(&q, |&(o, _)| o).ok();
                    assert_eq!(
                        t.index_of(q),
                        searched,
                        "offsets {offsets:?}, {finished} finished, query {q}"
                    );
                }
            }
        }
    }
}

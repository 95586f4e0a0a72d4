//! The intake: which partition's queue is read next, and which are held
//! back. Partitions are read in turn, a batch each, from a start that
//! rotates so that no partition is always served first; one is held back
//! (paused: not read) while its messages waiting behind busy lanes reach its
//! share of `max_buffered`, or its uncommitted window reaches
//! `max_uncommitted`. The engine's `fill` reads what the intake points at.

use std::collections::BTreeSet;

/// Why backpressure holds a partition back (it is not read meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// Its messages waiting behind busy lanes reached its share of
    /// `max_buffered` (key and partition ordering).
    Share,
    /// Its uncommitted window reached `max_uncommitted`.
    Window,
}

impl Held {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Share => "its buffer share is full",
            Self::Window => "its uncommitted window is full (max_uncommitted): it waits for its commits",
        }
    }
}

/// The assigned partitions in reading order, whose turn is next, which are
/// paused, and when the watermarks were last read.
#[derive(Debug, Default)]
pub(super) struct Intake {
    /// Assigned partitions in the order their queues are read.
    order: Vec<(usize, i32)>,
    /// Where the next turn starts in `order`.
    next_turn: usize,
    /// The partitions backpressure holds back now.
    paused: BTreeSet<(usize, i32)>,
    /// When the high watermarks were last read, in Unix milliseconds.
    last_watermarks: u64,
}

impl Intake {
    /// The assigned partitions are now `parts`.
    pub(super) fn rebuild(&mut self, mut parts: Vec<(usize, i32)>) {
        parts.sort_unstable();
        self.order = parts;
    }

    /// The assigned partitions, in reading order.
    pub(super) fn order(&self) -> &[(usize, i32)] {
        &self.order
    }

    /// Each partition's share of `max_buffered`.
    pub(super) fn share(&self, max_buffered: usize) -> usize {
        (max_buffered / self.order.len().max(1)).max(1)
    }

    /// Whether a partition with `blocked` messages waiting behind busy
    /// lanes and an uncommitted window of `window` offsets is held back,
    /// and why.
    pub(super) fn held(blocked: usize, share: usize, window: u64, max_uncommitted: usize) -> Option<Held> {
        if blocked >= share {
            return Some(Held::Share);
        }
        (window >= max_uncommitted as u64).then_some(Held::Window)
    }

    /// The `i`-th partition of this turn.
    pub(super) fn turn(&self, i: usize) -> (usize, i32) {
        self.order[(self.next_turn + i) % self.order.len()]
    }

    /// The turn stopped at its `i`-th partition (the buffer is full): the
    /// next starts after it, so a deep partition cannot starve the others.
    pub(super) fn stopped_at(&mut self, i: usize) {
        self.next_turn = (self.next_turn + i + 1) % self.order.len();
    }

    /// A pass over every partition ended: the next starts one further.
    pub(super) fn passed(&mut self) {
        self.next_turn = (self.next_turn + 1) % self.order.len().max(1);
    }

    /// Marks partition `p` of topic `t` paused or not; whether that changed.
    pub(super) fn set_paused(&mut self, t: usize, p: i32, paused: bool) -> bool {
        if paused {
            self.paused.insert((t, p))
        } else {
            self.paused.remove(&(t, p))
        }
    }

    /// Forgets a partition dropped; whether it was paused.
    pub(super) fn forget(&mut self, t: usize, p: i32) -> bool {
        self.paused.remove(&(t, p))
    }

    /// Whether the watermarks are due to be read again at `now` (once a
    /// second); if so, they count as read.
    pub(super) fn watermarks_due(&mut self, now: u64) -> bool {
        if now.saturating_sub(self.last_watermarks) < 1000 {
            return false;
        }
        self.last_watermarks = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake(n: i32) -> Intake {
        let mut i = Intake::default();
        i.rebuild((0..n).rev().map(|p| (0, p)).collect());
        i
    }

    #[test]
    fn partitions_are_read_in_order_from_a_start_that_rotates() {
        let mut i = intake(3);
        assert_eq!(i.order(), [(0, 0), (0, 1), (0, 2)]);
        let turn = |i: &Intake| (0..3).map(|k| i.turn(k).1).collect::<Vec<_>>();
        assert_eq!(turn(&i), [0, 1, 2]);
        i.passed();
        assert_eq!(turn(&i), [1, 2, 0]);
        // A turn that stops at its second partition starts after it next.
        i.stopped_at(1);
        assert_eq!(turn(&i), [0, 1, 2]);
        i.stopped_at(2);
        assert_eq!(turn(&i), [0, 1, 2], "after the last comes the first");
    }

    #[test]
    fn a_partition_is_held_at_its_share_or_its_window() {
        let i = intake(4);
        assert_eq!(i.share(100), 25);
        assert_eq!(intake(200).share(100), 1, "at least one each");
        assert_eq!(Intake::default().share(10), 10);
        assert_eq!(Intake::held(24, 25, 9, 10), None);
        assert_eq!(Intake::held(25, 25, 0, 10), Some(Held::Share));
        assert_eq!(Intake::held(0, 25, 10, 10), Some(Held::Window));
        assert_eq!(Intake::held(30, 25, 10, 10), Some(Held::Share), "the share first");
    }

    #[test]
    fn pauses_are_changes_and_a_dropped_partition_is_forgotten() {
        let mut i = intake(2);
        assert!(i.set_paused(0, 1, true));
        assert!(!i.set_paused(0, 1, true), "no change");
        assert!(!i.set_paused(0, 0, false), "no change");
        assert!(i.forget(0, 1));
        assert!(!i.forget(0, 1));
        assert!(i.set_paused(0, 1, true), "paused again after it was forgotten");
        assert!(i.set_paused(0, 1, false));
    }

    #[test]
    fn each_hold_says_why() {
        assert_eq!(Held::Share.reason(), "its buffer share is full");
        assert!(Held::Window.reason().contains("max_uncommitted"));
    }

    #[test]
    fn watermarks_are_read_once_a_second() {
        let mut i = Intake::default();
        assert!(i.watermarks_due(5_000));
        assert!(!i.watermarks_due(5_999));
        assert!(i.watermarks_due(6_000));
    }
}

//! Retry timers: failed messages waiting for their backoff, released to
//! the front of the schedule when due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::event::MessageTag;
use crate::message::Message;

/// Failed messages waiting for their retry, soonest first (in the order
/// they failed among those due at once).
#[derive(Default)]
pub(super) struct Retries {
    heap: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
}

impl Retries {
    /// `msg` of `slot` is tried again at `due`.
    pub(super) fn push(&mut self, due: Instant, slot: MessageTag, msg: Message) {
        self.seq += 1;
        self.heap.push(Reverse(Delayed {
            due,
            seq: self.seq,
            slot,
            msg,
        }));
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(super) fn clear(&mut self) {
        self.heap.clear();
    }

    /// The soonest retry, if it is due at `now`, taken out.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(MessageTag, Message)> {
        if self.heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
            return self.heap.pop().map(|Reverse(d)| (d.slot, d.msg));
        }
        None
    }

    /// When the soonest retry is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.due)
    }

    /// Forgets the retries of partition `p` of topic `t` at offset `from`
    /// or after.
    pub(super) fn drop_partition(&mut self, t: usize, p: i32, from: i64) {
        self.heap
            .retain(|Reverse(d)| !(d.slot.topic == t && d.slot.partition == p && d.msg.offset() >= from));
    }
}

/// A failed message waiting for its retry.
struct Delayed {
    due: Instant,
    seq: u64,
    slot: MessageTag,
    msg: Message,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tag(partition: i32) -> MessageTag {
        MessageTag {
            topic: 0,
            partition,
            epoch: 1,
            lane: None,
        }
    }

    #[test]
    fn retries_come_due_soonest_first_and_in_failure_order_when_due_together() {
        let now = Instant::now();
        let mut r = Retries::default();
        let later = now + Duration::from_secs(5);
        r.push(later, tag(0), Message::new("t", 0, 1));
        r.push(now, tag(0), Message::new("t", 0, 2));
        r.push(now, tag(1), Message::new("t", 1, 3));
        assert_eq!((r.len(), r.next_due()), (3, Some(now)));
        for o in 4..10 {
            r.push(now, tag(0), Message::new("t", 0, o));
        }
        let due: Vec<i64> = std::iter::from_fn(|| r.pop_due(now)).map(|(_, m)| m.offset()).collect();
        assert_eq!(
            due,
            [2, 3, 4, 5, 6, 7, 8, 9],
            "in failure order; the one due later waits"
        );
        assert_eq!(r.next_due(), Some(later));
        assert_eq!(r.pop_due(later).map(|(t, m)| (t, m.offset())), Some((tag(0), 1)));
        assert_eq!(r.next_due(), None);
    }

    #[test]
    fn a_partitions_retries_from_an_offset_on_are_dropped() {
        let now = Instant::now();
        let mut r = Retries::default();
        for (p, o) in [(0, 1), (0, 5), (1, 5), (0, 9)] {
            r.push(now, tag(p), Message::new("t", p, o));
        }
        r.drop_partition(0, 0, 5);
        let left: Vec<(i32, i64)> = std::iter::from_fn(|| r.pop_due(now))
            .map(|(t, m)| (t.partition, m.offset()))
            .collect();
        assert_eq!(left, [(0, 1), (1, 5)]);
        r.push(now, tag(0), Message::new("t", 0, 1));
        r.clear();
        assert_eq!(r.len(), 0);
    }
}

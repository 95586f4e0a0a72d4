//! Retry timers: failed messages waiting for their backoff, released to
//! the front of the schedule when due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::event::MessageTag;
use super::{Engine, IDLE_WAIT};
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

impl Engine {
    /// Moves retries that are due to the front of the schedule.
    pub(super) fn release_due(&mut self) {
        let now = Instant::now();
        while self.delayed.heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(d)) = self.delayed.heap.pop() else {
                break;
            };
            let live = self.topics[d.slot.topic]
                .partitions
                .get(&d.slot.partition)
                .is_some_and(|ps| ps.epoch == d.slot.epoch && !ps.holds_back(d.msg.offset()) && !ps.revoking);
            if live && !self.closing {
                self.waiting.retry(d.slot, d.msg);
            }
        }
    }

    /// How long the loop may sleep: until the next retry is due, at most
    /// `IDLE_WAIT`.
    pub(super) fn idle_wait(&self) -> Duration {
        self.delayed.heap.peek().map_or(IDLE_WAIT, |Reverse(d)| {
            d.due.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
        })
    }
}

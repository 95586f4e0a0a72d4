//! The schedule: which fetched messages may start now, given the
//! subscriber's ordering mode.
//!
//! Every message belongs to a *lane* or to none. In `unordered` mode no
//! message has a lane; in `partition` mode a partition is one lane; in `key`
//! mode each key of a partition is one (a message without a key has none: it
//! is its own key). A lane runs one message at a time: while one of its
//! messages is ready or running, the lane's later messages wait in it, in
//! offset order. Messages that may start now wait in one FIFO, `ready`, in
//! the order they became startable, so a busy lane never blocks another.
//!
//! A lane is identified by a hash of (topic, partition, key), not of the
//! assignment: when a partition is revoked while a message of a key runs,
//! and comes back to this member before it ends, the key's messages of the
//! new assignment wait for it. (Its lane outlives the revoke until it ends;
//! a lane whose holder has not started is dropped with the partition.) Two
//! keys that collide share a lane: they run one after another, which keeps
//! every ordering promise and costs only some concurrency.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};

use super::event::MessageTag;
use super::hash::SmallKeyMap;
use crate::message::Message;
use crate::subscriber::OrderingMode;

/// A busy lane: the message that holds it (ready, running, or waiting for
/// its retry) and the ones waiting behind it, in offset order. A batch
/// that took the lane's next messages along holds it with all of them
/// (`more`): the lane is free once every one has finished.
#[derive(Debug)]
struct Lane {
    holder: (MessageTag, i64),
    /// The holder ended and waits for its retry (it is not running).
    idle: bool,
    /// The other messages holding it (one batch's): their offsets, and
    /// whether each waits for its retry. Empty, and not allocated, for a
    /// handler of one message.
    more: Vec<(i64, bool)>,
    waiting: VecDeque<(MessageTag, Message)>,
}

impl Lane {
    /// Whether the message at `offset` of `slot` holds it.
    fn held_by(&self, slot: MessageTag, offset: i64) -> bool {
        self.holder.0 == slot && (self.holder.1 == offset || self.more.iter().any(|&(o, _)| o == offset))
    }

    /// Marks the holding message at `offset` idle (waiting for its retry)
    /// or not.
    fn set_idle(&mut self, offset: i64, idle: bool) {
        if self.holder.1 == offset {
            self.idle = idle;
        } else if let Some(m) = self.more.iter_mut().find(|(o, _)| *o == offset) {
            m.1 = idle;
        }
    }

    /// The holding message at `offset` no longer holds it; returns whether
    /// any other still does.
    fn release(&mut self, offset: i64) -> bool {
        if self.holder.1 == offset {
            if self.more.is_empty() {
                return false;
            }
            let (next, idle) = self.more.remove(0);
            self.holder.1 = next;
            self.idle = idle;
        } else {
            self.more.retain(|&(o, _)| o != offset);
        }
        true
    }
}

/// Fetched messages that have not started, and the lanes that are busy.
#[derive(Debug)]
pub(crate) struct Schedule {
    mode: OrderingMode,
    /// Messages that may start now, in the order they became startable.
    ready: VecDeque<(MessageTag, Message)>,
    /// Busy lanes (one of their messages is ready or running).
    lanes: HashMap<u64, Lane>,
    /// Messages waiting in lanes, by partition.
    blocked: SmallKeyMap<(usize, i32), usize>,
    /// Every message not started: `ready` plus the lanes' waiting ones.
    len: usize,
}

impl Schedule {
    pub(crate) fn new(mode: OrderingMode) -> Self {
        Self {
            mode,
            ready: VecDeque::new(),
            lanes: HashMap::new(),
            blocked: SmallKeyMap::default(),
            len: 0,
        }
    }

    /// Messages fetched and not started.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Messages of this partition waiting behind a busy lane.
    pub(crate) fn blocked(&self, topic: usize, partition: i32) -> usize {
        self.blocked.get(&(topic, partition)).copied().unwrap_or(0)
    }

    fn lane_of(&self, slot: &MessageTag, msg: &Message) -> Option<u64> {
        let key = match self.mode {
            OrderingMode::Unordered => return None,
            OrderingMode::Partition => None,
            OrderingMode::Key => Some(msg.key()?),
        };
        let mut h = DefaultHasher::new();
        (slot.topic, slot.partition).hash(&mut h);
        key.hash(&mut h);
        Some(h.finish())
    }

    /// Adds a fetched message: ready at once if its lane is free, else
    /// behind the lane's earlier messages.
    pub(crate) fn push(&mut self, slot: MessageTag, msg: Message) {
        let lane = self.lane_of(&slot, &msg);
        self.push_to(slot, msg, lane);
    }

    fn push_to(&mut self, mut slot: MessageTag, msg: Message, lane: Option<u64>) {
        self.len += 1;
        slot.lane = lane;
        let Some(id) = lane else {
            self.ready.push_back((slot, msg));
            return;
        };
        match self.lanes.get_mut(&id) {
            Some(lane) => {
                *self.blocked.entry((slot.topic, slot.partition)).or_insert(0) += 1;
                // It waits behind its key (partition) while later records
                // go on: copied, so it keeps no fetch response (see
                // `ffi::Held`).
                lane.waiting.push_back((slot, msg.detached()));
            }
            None => {
                self.lanes.insert(
                    id,
                    Lane {
                        holder: (slot, msg.offset()),
                        idle: false,
                        more: Vec::new(),
                        waiting: VecDeque::new(),
                    },
                );
                self.ready.push_back((slot, msg));
            }
        }
    }

    /// A failed message's next attempt: it starts before anything else
    /// (it still holds its lane, so nothing behind it has started).
    pub(crate) fn retry(&mut self, slot: MessageTag, msg: Message) {
        if let Some(lane) = slot.lane.and_then(|id| self.lanes.get_mut(&id)) {
            lane.set_idle(msg.offset(), false);
        }
        self.len += 1;
        self.ready.push_front((slot, msg));
    }

    /// The next message to start.
    pub(crate) fn pop(&mut self) -> Option<(MessageTag, Message)> {
        let next = self.ready.pop_front()?;
        self.len -= 1;
        Some(next)
    }

    /// The next batch to start: the next message, and after it as many
    /// others of its partition's assignment as may start now, up to `max`
    /// messages and `max_bytes` of keys and payloads (a first message
    /// larger than that comes alone), in offset order.
    ///
    /// A message that holds its lane alone takes the lane's waiting
    /// messages along (in `partition` ordering the lane is the partition,
    /// in `key` ordering its key): the batch holds the lane until all of
    /// them have finished, so a lane is never split across batches in
    /// flight at once and keeps its order.
    ///
    /// The messages of a partition `held` says is held (waiting to fill a
    /// batch) stay where they are.
    pub(crate) fn pop_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
        held: impl Fn(&MessageTag) -> bool,
    ) -> Option<Vec<(MessageTag, Message)>> {
        let at = self.ready.iter().position(|(slot, _)| !held(slot))?;
        let first = self.ready.remove(at)?;
        self.len -= 1;
        let of = (first.0.topic, first.0.partition, first.0.epoch);
        let mut bytes = size(&first.1);
        let mut batch = vec![first];
        self.take_along(&mut batch, 0, max, max_bytes, &mut bytes);
        let mut i = at;
        while i < self.ready.len() && batch.len() < max {
            let (slot, msg) = &self.ready[i];
            if (slot.topic, slot.partition, slot.epoch) != of {
                i += 1;
                continue;
            }
            if bytes.saturating_add(size(msg)) > max_bytes {
                break;
            }
            let Some(next) = self.ready.remove(i) else { break };
            self.len -= 1;
            bytes = bytes.saturating_add(size(&next.1));
            batch.push(next);
            let at = batch.len() - 1;
            self.take_along(&mut batch, at, max, max_bytes, &mut bytes);
        }
        batch.sort_by_key(|(_, msg)| msg.offset());
        Some(batch)
    }

    /// Moves the waiting messages of the lane `batch[at]` holds into the
    /// batch, in order, while it has room, if that message holds its lane
    /// alone (a message of a batch still running holds it too, and what
    /// waits must wait for that one).
    fn take_along(
        &mut self,
        batch: &mut Vec<(MessageTag, Message)>,
        at: usize,
        max: usize,
        max_bytes: usize,
        bytes: &mut usize,
    ) {
        let (slot, offset) = (batch[at].0, batch[at].1.offset());
        let Some(lane) = slot.lane.and_then(|id| self.lanes.get_mut(&id)) else {
            return;
        };
        if lane.holder != (slot, offset) || !lane.more.is_empty() {
            return;
        }
        let mut taken = 0;
        while batch.len() < max {
            let Some((next, msg)) = lane.waiting.front() else { break };
            // Two keys whose hashes collide share a lane: another
            // partition's message waits for this batch, outside it.
            if (next.topic, next.partition, next.epoch) != (slot.topic, slot.partition, slot.epoch)
                || bytes.saturating_add(size(msg)) > max_bytes
            {
                break;
            }
            let Some((next, msg)) = lane.waiting.pop_front() else {
                break;
            };
            *bytes = bytes.saturating_add(size(&msg));
            lane.more.push((msg.offset(), false));
            batch.push((next, msg));
            taken += 1;
        }
        if taken > 0 {
            self.len -= taken;
            if let Some(n) = self.blocked.get_mut(&(slot.topic, slot.partition)) {
                *n = n.saturating_sub(taken);
            }
        }
    }

    /// The message at `offset` of this slot ended and waits for its retry:
    /// it keeps its lane, but no longer runs.
    pub(crate) fn idle(&mut self, slot: MessageTag, offset: i64) {
        if let Some(lane) = slot.lane.and_then(|id| self.lanes.get_mut(&id)) {
            if lane.held_by(slot, offset) {
                lane.set_idle(offset, true);
            }
        }
    }

    /// The message at `offset` of this slot finished: if it held its lane,
    /// the lane's next message becomes ready, or the lane is free. Anything
    /// else (no lane, a lane dropped by a revoke) changes nothing.
    pub(crate) fn finished(&mut self, slot: MessageTag, offset: i64) {
        let Some(id) = slot.lane else { return };
        let Some(lane) = self.lanes.get_mut(&id) else {
            return;
        };
        if !lane.held_by(slot, offset) || lane.release(offset) {
            return;
        }
        match lane.waiting.pop_front() {
            Some((next, msg)) => {
                if let Some(n) = self.blocked.get_mut(&(next.topic, next.partition)) {
                    *n = n.saturating_sub(1);
                }
                lane.holder = (next, msg.offset());
                lane.idle = false;
                self.ready.push_back((next, msg));
            }
            None => {
                self.lanes.remove(&id);
            }
        }
    }

    /// Forgets every message of a partition that has not started (revoke,
    /// a stop, or a new assignment of it), and releases the lanes its
    /// messages hold, except those whose holder is running: such a lane is
    /// freed when its holder ends ([`Schedule::finished`]), so the key's
    /// messages of a later assignment wait for it.
    ///
    /// Only its messages at `from` or after go (`i64::MIN`: all of them; a
    /// stop at `from`: the earlier ones stay, in their lanes' order, and the
    /// lanes they hold stay theirs).
    pub(crate) fn drop_partition(&mut self, topic: usize, partition: i32, from: i64) {
        let of_it =
            |slot: &MessageTag, offset: i64| slot.topic == topic && slot.partition == partition && offset >= from;
        // A lane's holder runs unless it is one of these (not started) or
        // waits for its retry.
        let mut unstarted = std::collections::HashSet::new();
        self.ready.retain(|(slot, msg)| {
            let keep = !of_it(slot, msg.offset());
            if !keep {
                unstarted.insert((slot.epoch, msg.offset()));
            }
            keep
        });
        let mut waiting_dropped = 0;
        let mut promoted = Vec::new();
        self.lanes.retain(|_, lane| {
            let before = lane.waiting.len();
            lane.waiting.retain(|(slot, msg)| !of_it(slot, msg.offset()));
            waiting_dropped += before - lane.waiting.len();
            let holder = lane.holder.0;
            // A holding message goes with the partition unless it runs.
            let goes = |offset: i64, idle: bool| {
                of_it(&holder, offset) && (idle || unstarted.contains(&(holder.epoch, offset)))
            };
            lane.more.retain(|&(offset, idle)| !goes(offset, idle));
            if !goes(lane.holder.1, lane.idle) || lane.release(lane.holder.1) {
                return true;
            }
            // Only another partition's message can still be waiting here
            // (two keys whose hashes collide share a lane): it goes next.
            match lane.waiting.pop_front() {
                Some((next, msg)) => {
                    lane.holder = (next, msg.offset());
                    lane.idle = false;
                    promoted.push((next, msg));
                    true
                }
                None => false,
            }
        });
        for (next, msg) in promoted {
            if let Some(n) = self.blocked.get_mut(&(next.topic, next.partition)) {
                *n = n.saturating_sub(1);
            }
            self.ready.push_back((next, msg));
        }
        // What waited in lanes and went was this partition's (and counted
        // in `blocked`); what is left of it waits behind earlier messages.
        if let Some(n) = self.blocked.get_mut(&(topic, partition)) {
            *n = n.saturating_sub(waiting_dropped);
            if *n == 0 {
                self.blocked.remove(&(topic, partition));
            }
        }
        self.len -= unstarted.len() + waiting_dropped;
    }

    /// Forgets every message that has not started (shutdown).
    pub(crate) fn clear(&mut self) {
        self.ready.clear();
        self.lanes.clear();
        self.blocked.clear();
        self.len = 0;
    }
}

/// What a message counts toward `max_batch_bytes`: its key and payload.
fn size(msg: &Message) -> usize {
    msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(partition: i32) -> MessageTag {
        MessageTag {
            topic: 0,
            partition,
            epoch: 1,
            lane: None,
        }
    }

    fn msg(partition: i32, offset: i64, key: Option<&str>) -> Message {
        let m = Message::new("t", partition, offset);
        match key {
            Some(k) => m.with_key(k),
            None => m,
        }
    }

    fn drain(s: &mut Schedule) -> Vec<(MessageTag, i64)> {
        std::iter::from_fn(|| s.pop().map(|(slot, m)| (slot, m.offset()))).collect()
    }

    #[test]
    fn unordered_starts_everything_in_arrival_order() {
        let mut s = Schedule::new(OrderingMode::Unordered);
        for o in 0..4 {
            s.push(slot(0), msg(0, o, Some("a")));
        }
        assert_eq!(s.len(), 4);
        let offsets: Vec<i64> = drain(&mut s).into_iter().map(|(_, o)| o).collect();
        assert_eq!(offsets, [0, 1, 2, 3]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn key_mode_runs_one_message_per_key_and_frees_the_next_in_order() {
        let mut s = Schedule::new(OrderingMode::Key);
        // a0 b1 a2 a3 b4 -: a and b run at once; a2 waits for a0, b4 for b1;
        // the keyless 5 runs at once.
        for (o, k) in [
            (0, Some("a")),
            (1, Some("b")),
            (2, Some("a")),
            (3, Some("a")),
            (4, Some("b")),
            (5, None),
        ] {
            s.push(slot(0), msg(0, o, k));
        }
        assert_eq!(s.blocked(0, 0), 3);
        let first = drain(&mut s);
        assert_eq!(first.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [0, 1, 5]);
        assert_eq!(s.len(), 3);
        // b1 finishes: b4 is next; a is still busy.
        s.finished(first[1].0, first[1].1);
        let next = drain(&mut s);
        assert_eq!(next.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [4]);
        s.finished(first[0].0, first[0].1);
        let a2 = drain(&mut s);
        assert_eq!(a2.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [2]);
        s.finished(a2[0].0, a2[0].1);
        let a3 = drain(&mut s);
        assert_eq!(a3.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [3]);
        assert_eq!(s.blocked(0, 0), 0);
        // The keyless message had no lane; finishing it changes nothing.
        s.finished(first[2].0, first[2].1);
        s.finished(next[0].0, next[0].1);
        s.finished(a3[0].0, a3[0].1);
        assert!(s.lanes.is_empty());
        assert_eq!(s.len(), 0);
    }

    /// A stop at an offset drops only what comes at or after it: an earlier
    /// message waiting behind a busy lane still starts when the lane frees.
    #[test]
    fn a_stop_drops_only_what_comes_at_or_after_it() {
        let mut s = Schedule::new(OrderingMode::Key);
        // a0 (running) a1 (waits for a0) b2 (fails: the stop) a3 b4.
        for (o, k) in [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (4, "b")] {
            s.push(slot(0), msg(0, o, Some(k)));
        }
        let first = drain(&mut s);
        assert_eq!(first.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [0, 2]);
        s.finished(first[1].0, first[1].1);
        s.drop_partition(0, 0, 2);
        assert_eq!(s.len(), 1, "a1 stays; a3 and b4 go");
        assert_eq!(s.blocked(0, 0), 1);
        assert!(drain(&mut s).is_empty(), "a1 still waits for a0");
        s.finished(first[0].0, first[0].1);
        let next = drain(&mut s);
        assert_eq!(next.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [1]);
        s.finished(next[0].0, next[0].1);
        assert!(s.lanes.is_empty());
        assert_eq!((s.len(), s.blocked(0, 0)), (0, 0));
    }

    #[test]
    fn the_same_key_in_two_partitions_is_two_lanes() {
        let mut s = Schedule::new(OrderingMode::Key);
        s.push(slot(0), msg(0, 0, Some("a")));
        s.push(slot(1), msg(1, 0, Some("a")));
        assert_eq!(drain(&mut s).len(), 2);
    }

    #[test]
    fn colliding_keys_share_a_lane_and_a_dropped_holder_frees_it() {
        let mut s = Schedule::new(OrderingMode::Key);
        // Two partitions' keys with the same lane id (a hash collision).
        s.push_to(slot(0), msg(0, 0, Some("a")), Some(7));
        s.push_to(slot(1), msg(1, 0, Some("b")), Some(7));
        s.push_to(slot(0), msg(0, 1, Some("a")), Some(7));
        let first = drain(&mut s);
        assert_eq!(first.len(), 1, "one lane, one message at a time");
        // Partition 0 is revoked while its message runs: the lane stays
        // held until that message ends (its completion is still reported),
        // then partition 1's message goes next.
        s.drop_partition(0, 0, i64::MIN);
        assert!(drain(&mut s).is_empty());
        s.finished(first[0].0, first[0].1);
        let next = drain(&mut s);
        assert_eq!(
            next.iter().map(|(sl, o)| (sl.partition, *o)).collect::<Vec<_>>(),
            [(1, 0)]
        );
        s.finished(next[0].0, next[0].1);
        assert!(s.lanes.is_empty());
        assert_eq!(s.len(), 0);

        // A holder that has not started goes with its partition at once.
        s.push_to(slot(0), msg(0, 5, Some("a")), Some(7));
        s.push_to(slot(1), msg(1, 5, Some("b")), Some(7));
        s.drop_partition(0, 0, i64::MIN);
        let next = drain(&mut s);
        assert_eq!(
            next.iter().map(|(sl, o)| (sl.partition, *o)).collect::<Vec<_>>(),
            [(1, 5)]
        );
    }

    /// A partition is revoked while a message of key `a` runs, and comes
    /// back (a new epoch) before that message ends: the new assignment's
    /// messages of `a` wait for it; other keys do not.
    #[test]
    fn a_key_of_a_new_assignment_waits_for_the_old_assignments_running_message() {
        let mut s = Schedule::new(OrderingMode::Key);
        let old = slot(0);
        s.push(old, msg(0, 10, Some("a")));
        s.push(old, msg(0, 11, Some("b")));
        s.push(old, msg(0, 12, Some("a")));
        let running = drain(&mut s);
        assert_eq!(running.len(), 2, "a@10 and b@11 run");
        s.drop_partition(0, 0, i64::MIN);
        assert_eq!(s.len(), 0, "a@12 (not started) is forgotten");
        let new = MessageTag { epoch: 2, ..slot(0) };
        s.push(new, msg(0, 10, Some("a")));
        s.push(new, msg(0, 11, Some("b")));
        s.push(new, msg(0, 13, Some("c")));
        assert_eq!(s.blocked(0, 0), 2, "a@10 and b@11 wait for their old holders");
        let started = drain(&mut s);
        assert_eq!(started.iter().map(|(_, o)| *o).collect::<Vec<_>>(), [13]);
        // The old a@10 ends: the new a@10 may start now.
        s.finished(running[0].0, running[0].1);
        assert_eq!(
            drain(&mut s).iter().map(|(sl, o)| (sl.epoch, *o)).collect::<Vec<_>>(),
            [(2, 10)]
        );
        s.finished(running[1].0, running[1].1);
        assert_eq!(
            drain(&mut s).iter().map(|(sl, o)| (sl.epoch, *o)).collect::<Vec<_>>(),
            [(2, 11)]
        );
    }

    /// A lane whose holder waits for its retry (not running) is dropped
    /// with its partition, like one whose holder has not started.
    #[test]
    fn a_lane_held_by_a_message_waiting_for_its_retry_goes_with_the_partition() {
        let mut s = Schedule::new(OrderingMode::Key);
        s.push(slot(0), msg(0, 1, Some("a")));
        let started = drain(&mut s);
        s.idle(started[0].0, started[0].1);
        s.drop_partition(0, 0, i64::MIN);
        assert!(s.lanes.is_empty());
    }

    #[test]
    fn partition_mode_runs_one_message_per_partition() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..3 {
            s.push(slot(0), msg(0, o, Some("x")));
            s.push(slot(1), msg(1, o, None));
        }
        let first = drain(&mut s);
        assert_eq!(first.len(), 2);
        assert_eq!(s.blocked(0, 0), 2);
        assert_eq!(s.blocked(0, 1), 2);
        s.finished(first[0].0, first[0].1);
        let next = drain(&mut s);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].0.partition, next[0].1), (0, 1));
    }

    #[test]
    fn dropping_a_partition_forgets_its_lanes_and_counts() {
        let mut s = Schedule::new(OrderingMode::Key);
        for o in 0..4 {
            s.push(slot(0), msg(0, o, Some("a")));
            s.push(slot(1), msg(1, o, Some("a")));
        }
        let running = drain(&mut s);
        assert_eq!(s.len(), 6);
        s.drop_partition(0, 0, i64::MIN);
        assert_eq!(s.len(), 3);
        assert_eq!(s.blocked(0, 0), 0);
        // A late completion of the dropped partition is ignored.
        s.finished(running[0].0, running[0].1);
        assert!(drain(&mut s).is_empty());
        s.finished(running[1].0, running[1].1);
        assert_eq!(drain(&mut s).len(), 1);
        s.clear();
        assert_eq!(s.len(), 0);
    }

    /// A batch's (partition, offset) pairs.
    fn offsets(batch: &[(MessageTag, Message)]) -> Vec<(i32, i64)> {
        batch.iter().map(|(t, m)| (t.partition, m.offset())).collect()
    }

    fn pop_batch(s: &mut Schedule, max: usize) -> Vec<(MessageTag, Message)> {
        s.pop_batch(max, usize::MAX, |_| false).unwrap_or_default()
    }

    #[test]
    fn a_batch_is_one_partitions_ready_messages_in_offset_order_within_its_bounds() {
        let mut s = Schedule::new(OrderingMode::Unordered);
        for o in 0..4 {
            s.push(slot(0), msg(0, o, None).with_payload("xxxx"));
            s.push(slot(1), msg(1, o, None).with_payload("xxxx"));
        }
        assert_eq!(offsets(&pop_batch(&mut s, 3)), [(0, 0), (0, 1), (0, 2)]);
        assert_eq!(s.len(), 5);
        // The next is partition 1's: it is first in line now.
        assert_eq!(offsets(&pop_batch(&mut s, 10)), [(1, 0), (1, 1), (1, 2), (1, 3)]);
        // 9 bytes hold two messages of 4 (a first larger message comes alone).
        s.push(slot(0), msg(0, 9, None).with_payload("x".repeat(20)));
        let batch = s.pop_batch(10, 9, |_| false).unwrap_or_default();
        assert_eq!(offsets(&batch), [(0, 3)], "the next one would pass 9 bytes");
        assert_eq!(offsets(&s.pop_batch(10, 9, |_| false).unwrap_or_default()), [(0, 9)]);
        assert_eq!(s.len(), 0);
        // A held partition's messages wait; the others go.
        s.push(slot(0), msg(0, 10, None));
        s.push(slot(1), msg(1, 10, None));
        let batch = s.pop_batch(10, usize::MAX, |t| t.partition == 0).unwrap_or_default();
        assert_eq!(offsets(&batch), [(1, 10)]);
        assert!(s.pop_batch(10, usize::MAX, |t| t.partition == 0).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn in_partition_order_a_batch_takes_its_lane_along_and_holds_it_until_all_of_it_finished() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..6 {
            s.push(slot(0), msg(0, o, None));
        }
        assert_eq!(s.blocked(0, 0), 5);
        let batch = pop_batch(&mut s, 4);
        assert_eq!(offsets(&batch), [(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert_eq!((s.len(), s.blocked(0, 0)), (2, 2));
        assert!(pop_batch(&mut s, 4).is_empty(), "the lane is the batch's");
        // 2 waits for its retry; the others finish: the lane stays held.
        s.idle(batch[2].0, 2);
        for i in [0, 1, 3] {
            s.finished(batch[i].0, batch[i].1.offset());
        }
        assert!(pop_batch(&mut s, 4).is_empty(), "2 still holds the lane");
        // Its retry comes first, and takes what waits behind it along.
        s.retry(batch[2].0, msg(0, 2, None));
        let next = pop_batch(&mut s, 4);
        assert_eq!(offsets(&next), [(0, 2), (0, 4), (0, 5)]);
        for (t, m) in &next {
            s.finished(*t, m.offset());
        }
        s.push(slot(0), msg(0, 6, None));
        assert_eq!(offsets(&pop_batch(&mut s, 4)), [(0, 6)], "the lane was free again");
    }

    #[test]
    fn a_retry_holding_its_lane_with_others_takes_nothing_along() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..5 {
            s.push(slot(0), msg(0, o, None));
        }
        let batch = pop_batch(&mut s, 3);
        s.idle(batch[0].0, 0);
        s.idle(batch[2].0, 2);
        s.finished(batch[1].0, 1);
        s.retry(batch[0].0, msg(0, 0, None));
        // 2 (idle) holds the lane too: 3 and 4 must wait for it.
        assert_eq!(offsets(&pop_batch(&mut s, 10)), [(0, 0)]);
        assert_eq!(s.blocked(0, 0), 2);
    }

    #[test]
    fn in_key_order_a_batch_holds_several_keys_and_a_run_of_one() {
        let mut s = Schedule::new(OrderingMode::Key);
        // a0 b1 a2 a3 b4 c5 (partition 0), a0 (partition 1)
        for (o, k) in [(0, "a"), (1, "b"), (2, "a"), (3, "a"), (4, "b"), (5, "c")] {
            s.push(slot(0), msg(0, o, Some(k)));
        }
        s.push(slot(1), msg(1, 0, Some("a")));
        let batch = pop_batch(&mut s, 10);
        assert_eq!(offsets(&batch), [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]);
        assert_eq!(s.blocked(0, 0), 0);
        // Key a of partition 0 is held by 0, 2 and 3 until all three end.
        s.push(slot(0), msg(0, 6, Some("a")));
        assert_eq!(
            offsets(&pop_batch(&mut s, 10)),
            [(1, 0)],
            "another partition's a is another lane"
        );
        for o in [0, 2] {
            s.finished(batch[o as usize].0, o);
        }
        assert!(pop_batch(&mut s, 10).is_empty(), "a6 waits for a3");
        s.finished(batch[3].0, 3);
        assert_eq!(offsets(&pop_batch(&mut s, 10)), [(0, 6)]);
    }

    #[test]
    fn dropping_a_partition_frees_a_batchs_lane_unless_a_member_runs() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..4 {
            s.push(slot(0), msg(0, o, None));
        }
        let batch = pop_batch(&mut s, 2);
        // 0 waits for its retry, 1 runs: dropping the partition leaves the
        // lane to 1, and a new assignment's messages wait for it.
        s.idle(batch[0].0, 0);
        s.drop_partition(0, 0, i64::MIN);
        assert_eq!(s.len(), 0);
        let mut again = slot(0);
        again.epoch = 2;
        s.push(again, msg(0, 0, None));
        assert!(pop_batch(&mut s, 2).is_empty(), "the new 0 waits for the old 1");
        s.finished(batch[1].0, 1);
        assert_eq!(offsets(&pop_batch(&mut s, 2)), [(0, 0)]);
    }

    #[test]
    fn a_lane_taken_along_stops_at_the_byte_bound_and_an_exact_fit_goes_in() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..4 {
            s.push(slot(0), msg(0, o, None).with_payload("xxxx"));
        }
        let batch = s.pop_batch(10, 8, |_| false).unwrap_or_default();
        assert_eq!(offsets(&batch), [(0, 0), (0, 1)], "8 bytes hold two of 4, not three");
        let mut s = Schedule::new(OrderingMode::Unordered);
        for o in 0..3 {
            s.push(slot(0), msg(0, o, None).with_payload("xxxx"));
        }
        let batch = s.pop_batch(10, 8, |_| false).unwrap_or_default();
        assert_eq!(offsets(&batch), [(0, 0), (0, 1)]);
    }

    #[test]
    fn a_batch_member_waiting_for_its_retry_goes_with_its_partition_and_frees_the_lane_with_the_others() {
        let mut s = Schedule::new(OrderingMode::Partition);
        for o in 0..3 {
            s.push(slot(0), msg(0, o, None));
        }
        let batch = pop_batch(&mut s, 3);
        // 1 waits for its retry; 0 and 2 run. The partition is dropped: 1
        // goes, and the lane is freed once 0 and 2 have ended.
        s.idle(batch[1].0, 1);
        s.drop_partition(0, 0, i64::MIN);
        let mut again = slot(0);
        again.epoch = 2;
        s.push(again, msg(0, 0, None));
        s.finished(batch[0].0, 0);
        assert!(pop_batch(&mut s, 3).is_empty(), "2 still runs");
        s.finished(batch[2].0, 2);
        assert_eq!(offsets(&pop_batch(&mut s, 3)), [(0, 0)], "the lane was not left to 1");
    }
}

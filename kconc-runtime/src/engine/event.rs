//! What the engine's threads tell each other: the poll loop hands messages
//! to workers tagged with their partition (a [`MessageTag`]), and the
//! workers and the committer report back with [`Event`]s on one channel.

use std::sync::Arc;
use std::time::Instant;

use super::Engine;
use crate::message::Message;

/// An event for the poll loop: a handler task ended, or the consumer's queue
/// has something to poll.
#[derive(Debug)]
pub(crate) enum Event {
    /// Finished: handled, skipped or dead-lettered.
    Done(Completion),
    /// Failed with retries left: `msg` (its next attempt) starts again at `due`.
    Retry {
        slot: MessageTag,
        msg: Message,
        due: Instant,
    },
    /// Failed its last attempt under `on_error = stop`.
    Stopped {
        slot: MessageTag,
        offset: i64,
        reason: String,
    },
    /// Never run, or given up without finishing, because shutdown began or
    /// the runtime is gone (a message handed to a worker too late, a dead
    /// letter not yet acknowledged): the slot is free, the offset stays
    /// uncommitted. Never sent while the subscriber runs on.
    Abandoned(MessageTag, i64),
    /// Several of the above, sent together by one worker.
    Batch(Vec<Event>),
    /// The committer committed these positions (partition, epoch, offset).
    Committed(Vec<(PartitionKey, u64, i64)>),
    Wake,
}

/// A message finished: handled, or failed and given up on. Every started
/// handler reports exactly once, so no offset can become a permanent floor.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) slot: MessageTag,
    pub(crate) offset: i64,
}

/// Where a partition's state lives in the poll loop, which assignment
/// (epoch) of it the message belongs to, and its ordering lane, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageTag {
    pub(crate) topic: usize,
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) lane: Option<u64>,
}

/// A partition, as the committer keys it. With an epoch it names one
/// assignment of it: the same partition assigned again later is a new
/// epoch and starts its committed position afresh.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartitionKey {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
}

// What the poll loop does with each event.

impl Engine {
    pub(super) fn on_event(&mut self, ev: Event) {
        let (slot, offset) = match ev {
            Event::Wake => return,
            Event::Committed(positions) => {
                for (key, epoch, offset) in positions {
                    self.parts.committed(&key, epoch, offset);
                }
                return;
            }
            Event::Batch(events) => {
                for ev in events {
                    self.on_event(ev);
                }
                return;
            }
            Event::Done(ref c) => (c.slot, c.offset),
            Event::Retry { slot, ref msg, .. } => (slot, msg.offset()),
            Event::Stopped { slot, offset, .. } | Event::Abandoned(slot, offset) => (slot, offset),
        };
        // Every other event frees a handler slot.
        let Some(mut ended) = self.parts.ended(slot) else {
            // A handler of an assignment that is gone (revoked, or since
            // assigned again): its outcome counts for nothing here, but the
            // lane it held is free now, so the key's messages of the new
            // assignment may start.
            self.waiting.finished(slot, offset);
            return;
        };
        match ev {
            Event::Done(c) => {
                ended.finish(c.offset);
                self.plan.finished();
                self.waiting.finished(c.slot, c.offset);
            }
            Event::Retry { slot, msg, due } => {
                // A revoked partition's message is not tried again here: it
                // stays uncommitted and goes to the new owner.
                if ended.may_retry(msg.offset()) && !self.closing {
                    // It keeps its lane, idle, until its retry starts.
                    self.waiting.idle(slot, msg.offset());
                    self.delayed.push(due, slot, msg);
                } else {
                    self.waiting.finished(slot, msg.offset());
                }
            }
            Event::Stopped { slot, offset, reason } => {
                ended.stop(offset);
                self.waiting.finished(slot, offset);
                self.forget_unstarted_from(slot.topic, slot.partition, offset);
                self.dispatcher.stats().set_stopped(
                    self.parts.name(slot.topic),
                    slot.partition,
                    Some((offset, reason)),
                );
            }
            Event::Abandoned(slot, offset) => self.waiting.finished(slot, offset),
            Event::Batch(_) | Event::Committed(_) | Event::Wake => {}
        }
    }
}

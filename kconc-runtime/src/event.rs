//! What the engine's threads tell each other: the poll loop hands messages
//! to workers tagged with their partition (a [`PartitionSlot`]), and the
//! workers and the committer report back with [`Event`]s on one channel.

use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;

/// An event for the poll loop: a handler task ended, or the consumer's queue
/// has something to poll.
#[derive(Debug)]
pub(crate) enum Event {
    /// Finished: handled, skipped or dead-lettered.
    Done(Completion),
    /// Failed with retries left: `msg` (its next attempt) starts again at `due`.
    Retry {
        slot: PartitionSlot,
        msg: Message,
        due: Instant,
    },
    /// Failed its last attempt under `on_error = stop`.
    Stopped {
        slot: PartitionSlot,
        offset: i64,
        reason: String,
    },
    /// Never run, or given up without finishing, because shutdown began or
    /// the runtime is gone (a message handed to a worker too late, a dead
    /// letter not yet acknowledged): the slot is free, the offset stays
    /// uncommitted. Never sent while the subscriber runs on.
    Abandoned(PartitionSlot, i64),
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
    pub(crate) slot: PartitionSlot,
    pub(crate) offset: i64,
}

/// Where a partition's state lives in the poll loop, which assignment
/// (epoch) of it the message belongs to, and its ordering lane, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartitionSlot {
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

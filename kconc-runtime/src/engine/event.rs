//! What the engine's threads tell each other: the poll loop hands messages
//! to workers tagged with their partition (a [`MessageTag`]), and the
//! workers and the committer report back with [`Event`]s on one channel.

use std::sync::atomic::Ordering;
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
    /// Failed with retries left: `msg` (its next attempt) starts again at
    /// `due`. Boxed: a retry is rare, and every event is moved (from the
    /// handler's place to the poll loop) at the size of its largest kind.
    Retry {
        slot: MessageTag,
        msg: Box<Message>,
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
    /// A batch handler's call ended: the event of each of its messages.
    /// Its slot is free.
    BatchEnded(Vec<Event>),
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
            Event::Batch(mut events) => {
                for ev in events.drain(..) {
                    self.on_event(ev);
                }
                self.dispatcher.shared.spare_events.put(events);
                return;
            }
            Event::BatchEnded(mut events) => {
                self.batches = self.batches.saturating_sub(1);
                let stats = self.dispatcher.stats();
                stats.batches_in_flight.store(self.batches as u64, Ordering::Relaxed);
                // A batch's retries are due together, at the latest of
                // their times, so they come back in one batch, in offset
                // order (with jitter apart, a later offset of a lane could
                // be tried again before an earlier one).
                let last_due = events
                    .iter()
                    .filter_map(|ev| match ev {
                        Event::Retry { due, .. } => Some(*due),
                        _ => None,
                    })
                    .max();
                for ev in &mut events {
                    if let (Event::Retry { due, .. }, Some(last)) = (ev, last_due) {
                        *due = last;
                    }
                }
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
                    self.delayed.push(due, slot, *msg);
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
            Event::Batch(_) | Event::BatchEnded(_) | Event::Committed(_) | Event::Wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::commit::CommitRequest;
    use super::super::test_util::TestEngine;
    use super::*;
    use crate::subscriber::{OrderingMode, Subscriber};

    /// An engine whose handlers never end on their own: the test says how
    /// each ends, with the event a worker would send. Partition 0 of `t`
    /// assigned, offsets `0..n` read and started.
    fn started(ordering: OrderingMode, n: i64) -> (TestEngine, Vec<MessageTag>) {
        let sub = Subscriber::new("s", ["t"], "g", |_m: Message| std::future::pending::<()>())
            .ordering(ordering)
            .commit_batch_size(1)
            .commit_metadata(crate::CommitMetadata::None);
        let mut te = TestEngine::new(&sub);
        te.assign("t", 1);
        for o in 0..n {
            te.engine.enqueue(0, Message::new("t", 0, o).with_key("k"), 0);
        }
        te.engine.start_waiting();
        let epoch = te.engine.parts.epoch(0, 0).unwrap();
        let lane = match ordering {
            OrderingMode::Unordered => None,
            // The schedule's lane of key "k" in partition 0: read it back
            // from a message pushed and popped alone.
            _ => {
                let mut s = super::super::schedule::Schedule::new(ordering);
                let tag = MessageTag {
                    topic: 0,
                    partition: 0,
                    epoch,
                    lane: None,
                };
                s.push(tag, Message::new("t", 0, 0).with_key("k"));
                s.pop().and_then(|(t, _)| t.lane)
            }
        };
        let tags = (0..n)
            .map(|_| MessageTag {
                topic: 0,
                partition: 0,
                epoch,
                lane,
            })
            .collect();
        (te, tags)
    }

    fn done(tag: MessageTag, offset: i64) -> Event {
        Event::Done(Completion { slot: tag, offset })
    }

    /// The positions asked for since the last call.
    fn asked(te: &TestEngine) -> Vec<i64> {
        te.requests()
            .into_iter()
            .flat_map(|r| match r {
                CommitRequest::Positions(w) => w.into_iter().map(|w| w.offset).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_finished_message_frees_its_slot_and_is_committed_in_order() {
        let (mut te, tags) = started(OrderingMode::Unordered, 3);
        assert_eq!(te.engine.parts.running(), 3);
        te.engine.on_event(done(tags[1], 1));
        assert_eq!(te.engine.parts.running(), 2);
        te.engine.maybe_commit(false);
        assert_eq!(asked(&te), Vec::<i64>::new(), "0 has not finished");
        te.engine.on_event(Event::Batch(vec![done(tags[0], 0), Event::Wake]));
        te.engine.maybe_commit(false);
        assert_eq!(asked(&te), [2]);
        assert_eq!(te.engine.parts.in_flight(&[(0, 0)]), 1);
    }

    #[test]
    fn a_retry_waits_holding_its_lane_unless_its_partition_stopped_or_is_revoked() {
        let (mut te, tags) = started(OrderingMode::Key, 2);
        assert_eq!(
            (te.engine.parts.running(), te.engine.waiting.len()),
            (1, 1),
            "1 waits behind 0"
        );
        let due = std::time::Instant::now() + Duration::from_secs(3600);
        let retry = |tag| Event::Retry {
            slot: tag,
            msg: Box::new(Message::new("t", 0, 0).with_key("k")),
            due,
        };
        te.engine.on_event(retry(tags[0]));
        assert_eq!(te.engine.buffered(), 2, "the retry waits, and 1 behind it");
        te.engine.start_waiting();
        assert_eq!(te.engine.parts.running(), 0, "1 waits for 0's retry");
        // Revoked meanwhile: a retry is not taken.
        let (mut te, tags) = started(OrderingMode::Unordered, 1);
        assert!(te.engine.parts.revoke(0, 0));
        te.engine.on_event(retry(tags[0]));
        assert_eq!((te.engine.buffered(), te.engine.parts.running()), (0, 0));
        // Shutting down: not taken either.
        let (mut te, tags) = started(OrderingMode::Unordered, 1);
        te.engine.closing = true;
        te.engine.on_event(retry(tags[0]));
        assert_eq!(te.engine.buffered(), 0);
    }

    #[test]
    fn a_stop_holds_its_partition_at_the_offset_and_says_so() {
        let (mut te, tags) = started(OrderingMode::Key, 3);
        te.engine.on_event(Event::Stopped {
            slot: tags[0],
            offset: 0,
            reason: "boom".into(),
        });
        let stopped = te.engine.dispatcher.stats().stopped_partitions();
        assert_eq!((stopped.len(), stopped[0].offset, &*stopped[0].reason), (1, 0, "boom"));
        assert_eq!(te.engine.waiting.len(), 0, "what waited after it is forgotten");
        te.engine.start_waiting();
        assert_eq!(te.engine.parts.running(), 0, "nothing after it starts");
        assert!(te.engine.parts.read_window(0, 0).is_none(), "not read any more");
    }

    #[test]
    fn an_event_of_a_gone_assignment_frees_its_slot_and_lane_only() {
        let (mut te, tags) = started(OrderingMode::Partition, 2);
        te.assign("t", 1); // assigned again: a new epoch
        for o in 0..2 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        te.engine.start_waiting();
        assert_eq!(
            te.engine.parts.running(),
            1,
            "the new epoch's 0 waits for the old one's"
        );
        te.engine.on_event(Event::Abandoned(tags[0], 0));
        assert_eq!(te.engine.parts.running(), 0);
        te.engine.start_waiting();
        assert_eq!(te.engine.parts.running(), 1, "its lane is free: the new 0 starts");
        te.engine.maybe_commit(true);
        assert_eq!(asked(&te), Vec::<i64>::new(), "the old end finished nothing");
    }

    #[test]
    fn a_commit_is_recorded_for_its_assignment() {
        let (mut te, tags) = started(OrderingMode::Unordered, 2);
        assert_eq!(te.engine.parts.window(0, 0), Some(2));
        let key = te.engine.parts.key(0, 0);
        te.engine.on_event(Event::Committed(vec![(key, tags[0].epoch, 1)]));
        assert_eq!(te.engine.parts.window(0, 0), Some(1));
        te.engine.on_event(Event::Wake);
        assert_eq!(te.engine.parts.running(), 2, "no slot freed");
    }

    #[test]
    fn a_batchs_retries_are_due_together_at_the_latest() {
        let (mut te, tags) = started(OrderingMode::Unordered, 2);
        let now = std::time::Instant::now();
        let retry = |tag, offset, after| Event::Retry {
            slot: tag,
            msg: Box::new(Message::new("t", 0, offset)),
            due: now + Duration::from_secs(after),
        };
        te.engine.batches = 1;
        te.engine
            .on_event(Event::BatchEnded(vec![retry(tags[0], 0, 100), retry(tags[1], 1, 200)]));
        assert_eq!(te.engine.batches, 0, "the call's slot is free");
        assert_eq!(te.engine.delayed.next_due(), Some(now + Duration::from_secs(200)));
    }
}

//! Fetching under backpressure: each assigned partition's own queue is read
//! only while the engine has room (`max_buffered`, the partition's share of
//! it, `max_uncommitted`: see `intake`); what is read is enqueued in the
//! schedule. Also the records librdkafka cannot read, and the watermarks
//! health reports.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::Offset;

use super::commit::CommitRequest;
use super::event::MessageTag;
use super::ffi::Polled;
use super::intake::{Held, Intake};
use super::partitions::{BatchStep, Read};
use super::rebalance::ClientHooks;
use super::{ffi, Engine, FILL_READS, PARTITION_BATCH};
use crate::message::Message;
use crate::policy::OnError;

impl Engine {
    /// Publishes what health and metrics read: the time of this turn, the
    /// buffered count and, once a second, the partitions' high watermarks
    /// (librdkafka's cached values: no request to the broker).
    pub(super) fn observe(&mut self, consumer: &BaseConsumer<ClientHooks>) {
        let stats = self.dispatcher.stats();
        let now = crate::stats::unix_ms();
        stats.last_poll_ms.store(now, Ordering::Relaxed);
        stats.buffered.store(self.buffered() as u64, Ordering::Relaxed);
        if !self.intake.watermarks_due(now) {
            return;
        }
        let mut marks = Vec::new();
        let mut progress = std::collections::BTreeMap::new();
        for &(t, p) in self.intake.order() {
            let topic = &**self.parts.name(t);
            if let Some(high) = ffi::cached_high_watermark(consumer, topic, p) {
                marks.push(((topic.to_owned(), p), high));
            }
            if let Some(at) = self.parts.progress(t, p) {
                progress.insert((topic.to_owned(), p), at);
            }
        }
        if let Ok(mut map) = stats.high_watermarks.lock() {
            map.extend(marks);
        }
        if let Ok(mut map) = stats.progress.lock() {
            *map = progress;
        }
        self.parts.drain_stopped_unreadable();
    }

    /// Takes in a record read from partition `msg.partition()` of topic
    /// `t`, written in leader epoch `leader_epoch`: into the schedule, or
    /// counted finished when the committed metadata says it finished before.
    pub(super) fn enqueue(&mut self, t: usize, msg: Message, leader_epoch: i32) {
        self.dispatcher.stats().received.fetch_add(1, Ordering::Relaxed);
        let p = msg.partition();
        let (epoch, first, done_before) = match self.parts.read(t, p, msg.offset(), leader_epoch) {
            Read::Gone => return,
            Read::Seek(next) => {
                self.move_fetch(t, p, next);
                return;
            }
            Read::Take {
                epoch,
                first,
                stale,
                done_before,
            } => {
                if let Some(base) = stale {
                    self.stale_below(t, p, base, msg.offset());
                }
                (epoch, first, done_before)
            }
            Read::Reread(from) => {
                self.seek(t, p, from);
                return;
            }
            Read::Back { reread_from } => {
                // The partition's position went back within the assignment
                // (a reset after log truncation, say): what comes now was
                // never handled, so it is handled, as in a new assignment;
                // and so is what was read below it and had not finished
                // (its handling is given up with the old assignment).
                tracing::warn!(
                    subscriber = &*self.settings.name,
                    topic = &**self.parts.name(t),
                    partition = p,
                    offset = msg.offset(),
                    reread_from,
                    "the partition's position went back; handling from there as a new assignment"
                );
                self.restart_partition(t, p);
                if let Some(from) = reread_from {
                    self.parts.resume_at(t, p, from);
                    self.seek(t, p, from);
                    return;
                }
                let Some(epoch) = self.parts.read_again(t, p, msg.offset(), leader_epoch) else {
                    return;
                };
                (epoch, true, false)
            }
        };
        let slot = MessageTag {
            topic: t,
            partition: p,
            epoch,
            lane: None,
        };
        if first {
            self.dispatcher
                .stats()
                .set_fetch_start(self.parts.name(t), p, msg.offset());
        }
        if done_before {
            // Finished before (the committed metadata says so): it counts as
            // finished without a handler. It enters no lane: in key or
            // partition order its earlier messages had finished before it.
            self.count_done_before();
            return;
        }
        self.waiting.push(slot, msg);
        self.filling(t, p);
        self.dispatcher
            .stats()
            .max_waiting
            .fetch_max(self.buffered() as u64, Ordering::Relaxed);
    }

    /// Reports that partition `p` of topic `t` starts reading at `first`,
    /// below the committed offset `base` its inherited set came with (with
    /// `store = "sql"`, the database forgets the set: nothing of the
    /// partition has started yet).
    fn stale_below(&self, t: usize, p: i32, base: i64, first: i64) {
        self.stale(
            t,
            p,
            base,
            &format!(
                "reading starts at offset {first}, below it (the log was truncated, or deleted and created again)"
            ),
        );
        if let Some(store) = self.dispatcher.store() {
            self.forget_stored(&*store, t, p);
        }
    }

    /// Counts a message passed as finished before (the committed metadata
    /// lists it): toward the next commit, and in `skipped_already_done`.
    fn count_done_before(&mut self) {
        self.plan.finished();
        self.dispatcher.stats().already_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages read and not started: waiting for a slot or their lane,
    /// or for their retry. What `max_buffered` bounds.
    pub(super) fn buffered(&self) -> usize {
        self.waiting.len() + self.delayed.len()
    }

    /// Why partition `p` of topic `t` is not read now, if it is not (see
    /// [`Intake::held`]); `None` too when it is not assigned.
    fn held_back(&self, t: usize, p: i32, share: usize) -> Option<Held> {
        let window = self.parts.window(t, p)?;
        Intake::held(self.waiting.blocked(t, p), share, window, self.settings.max_uncommitted)
    }

    /// Reads partition queues, a batch from each in turn, while fewer than
    /// `max_buffered` messages wait (retries included) and the partition is
    /// not held back (see [`Intake::held`]), up to `FILL_READS` messages.
    /// Returns how many it read.
    pub(super) fn fill(&mut self) -> usize {
        let n = self.intake.order().len();
        if self.closing || n == 0 {
            return 0;
        }
        let share = self.intake.share(self.settings.max_buffered);
        let mut windows_full = Vec::new();
        for i in 0..n {
            let (t, p) = self.intake.order()[i];
            let held = self.held_back(t, p, share);
            if held == Some(Held::Window) {
                windows_full.push((t, p));
            }
            self.set_paused(t, p, held);
        }
        // A partition held by its uncommitted window waits for its commits:
        // what of it finished is asked for at once, not at the batch size or
        // the interval (which may be far off).
        if !windows_full.is_empty() {
            let positions = self
                .plan
                .positions(&mut self.parts, &windows_full, self.dispatcher.stats());
            if !positions.is_empty() {
                self.committer.request(CommitRequest::Positions(positions));
            }
        }
        let mut read = 0;
        loop {
            let mut progress = false;
            for i in 0..n {
                let (t, p) = self.intake.turn(i);
                for _ in 0..PARTITION_BATCH {
                    if self.buffered() >= self.settings.max_buffered || read >= FILL_READS {
                        self.intake.stopped_at(i);
                        return read;
                    }
                    let Some(window) = self.parts.read_window(t, p) else {
                        break;
                    };
                    let blocked = self.waiting.blocked(t, p);
                    if let Some(held) = Intake::held(blocked, share, window, self.settings.max_uncommitted) {
                        self.set_paused(t, p, Some(held));
                        break;
                    }
                    match self.parts.poll(t, p, self.settings.hold) {
                        Polled::Message(msg, leader_epoch) => {
                            self.enqueue(t, msg, leader_epoch);
                            read += 1;
                            progress = true;
                            // Started as soon as read while slots are free:
                            // a handler that ends on its first poll then
                            // frees its record before the next is read. (A
                            // batch starts with what this fill has read.)
                            if self.settings.batch.is_none() && self.has_slot() {
                                self.start_waiting();
                            }
                        }
                        Polled::Error { code, offset, reason } => {
                            self.on_partition_error(t, p, code, offset, &reason);
                            break;
                        }
                        Polled::Empty => break,
                    }
                }
            }
            self.intake.passed();
            if !progress {
                return read;
            }
        }
    }

    /// An error librdkafka reported on a partition's queue.
    pub(super) fn on_partition_error(
        &mut self,
        t: usize,
        p: i32,
        code: RDKafkaErrorCode,
        offset: Option<i64>,
        reason: &str,
    ) {
        match (code, offset) {
            // Only with enable.partition.eof: not an error of any record.
            (RDKafkaErrorCode::PartitionEOF, _) => {}
            (
                RDKafkaErrorCode::BadMessage | RDKafkaErrorCode::BadCompression | RDKafkaErrorCode::NotImplemented,
                Some(at),
            ) => self.unreadable(t, p, at, code, reason),
            _ => tracing::warn!(
                subscriber = &*self.settings.name,
                topic = &**self.parts.name(t),
                partition = p,
                error = reason,
                ?offset,
                "fetch error"
            ),
        }
    }

    /// A record batch starting at `at` that librdkafka cannot read (corrupt,
    /// or compressed with a codec it cannot decompress). librdkafka does not
    /// move past it: it fetches it again and reports it again. Here it is a
    /// failed message at `at`, under the error policy, counted in
    /// `records_unreadable`: `stop` stops the partition there; `skip`
    /// commits past it and `dead_letter` first produces a dead letter for
    /// it (no key or payload: only where it was and why), and then the fetch
    /// is moved to find where the batch ends (a fetch anywhere in the batch
    /// returns the whole batch, and its end is not reported: see
    /// `BatchEnd`), so no readable record after it is passed over.
    ///
    /// Where the committed metadata lists the batch's offsets as finished
    /// (its previous owner routed it already), the fetch is moved past them
    /// without the policy, but only as far as they are listed: the first
    /// offset of the batch it does not list goes through the policy from
    /// there (the previous owner had read the batch, and its records there
    /// had not finished).
    pub(super) fn unreadable(&mut self, t: usize, p: i32, at: i64, code: RDKafkaErrorCode, reason: &str) {
        match self.parts.unreadable(t, p, at) {
            BatchStep::Ignore => {}
            BatchStep::Seek(next) => self.move_fetch(t, p, next),
            BatchStep::PassListed { to, stale } => {
                if let Some(base) = stale {
                    self.stale_below(t, p, base, at);
                }
                self.count_done_before();
                self.parts.pass_listed(t, p, at, to);
                self.move_fetch(t, p, to);
            }
            BatchStep::Route { from, stale } => {
                if let Some(base) = stale {
                    self.stale_below(t, p, base, at);
                }
                self.route_unreadable(t, p, at, from, code, reason);
            }
        }
    }

    /// Routes the unreadable batch reported at `at`, from its offset
    /// `from` on (already dispatched), through the error policy (see
    /// [`Engine::unreadable`]).
    fn route_unreadable(&mut self, t: usize, p: i32, at: i64, from: i64, code: RDKafkaErrorCode, reason: &str) {
        let topic = self.parts.name(t).clone();
        let Some(epoch) = self.parts.epoch(t, p) else {
            return;
        };
        let slot = MessageTag {
            topic: t,
            partition: p,
            epoch,
            lane: None,
        };
        self.dispatcher.stats().unreadable.fetch_add(1, Ordering::Relaxed);
        let error = if from == at {
            format!("record batch at offset {at} cannot be read ({code:?}): {reason}")
        } else {
            format!(
                "record batch at offset {at} cannot be read ({code:?}): {reason}; its records from offset {from} on \
                 had not finished before"
            )
        };
        let on_error = self.dispatcher.on_error().clone();
        tracing::error!(
            subscriber = &*self.settings.name,
            topic = &*topic,
            partition = p,
            offset = from,
            error,
            "unreadable records; {}",
            match on_error {
                OnError::Stop => "partition stopped: nothing after this offset is handled or committed until it is reassigned or the program restarts",
                OnError::Skip => "skipped (the batch counts as finished)",
                OnError::DeadLetter(_) => "dead-lettering where they were (their content cannot be read)",
            }
        );
        match on_error {
            OnError::Stop => {
                self.parts.stop_unreadable(t, p, at, from);
                let stats = self.dispatcher.stats();
                stats.stopped.fetch_add(1, Ordering::Relaxed);
                stats.set_stopped(&topic, p, Some((from, error)));
                self.forget_unstarted_from(t, p, from);
            }
            OnError::Skip => {
                self.dispatcher.stats().skipped.fetch_add(1, Ordering::Relaxed);
                self.parts.finish(t, p, from);
                self.plan.finished();
                self.search_end(t, p, at, from);
            }
            OnError::DeadLetter(_) => {
                self.parts.started(slot);
                self.dispatcher.dead_letter(slot, Message::new(&topic, p, from), error);
                self.dispatcher.flush();
                self.search_end(t, p, at, from);
            }
        }
    }

    /// Starts the search for the end of the unreadable batch at `at`, whose
    /// offsets up to `from` are routed (see `BatchEnd`).
    fn search_end(&mut self, t: usize, p: i32, at: i64, from: i64) {
        let end = self
            .consumer
            .upgrade()
            .and_then(|c| ffi::cached_high_watermark(&c, self.parts.name(t), p));
        let probe = self.parts.search_end(t, p, at, from, end);
        self.move_fetch(t, p, probe);
    }

    /// Moves the fetch of partition `p` of topic `t` to `to`, past (or into)
    /// an unreadable batch.
    fn move_fetch(&mut self, t: usize, p: i32, to: i64) {
        self.dispatcher
            .stats()
            .unreadable_probes
            .fetch_add(1, Ordering::Relaxed);
        self.seek(t, p, to);
    }

    /// Moves the fetch of partition `p` of topic `t` to `to`.
    fn seek(&mut self, t: usize, p: i32, to: i64) {
        let topic = self.parts.name(t).clone();
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        if let Err(e) = consumer.seek(&topic, p, Offset::Offset(to), Duration::ZERO) {
            tracing::warn!(
                subscriber = &*self.settings.name, topic = &*topic, partition = p, offset = to, error = %e,
                "cannot move the fetch; trying again at the next record"
            );
        }
    }

    /// Marks a partition paused (`Some(why)`) or resumed by backpressure,
    /// logging and counting the change.
    pub(super) fn set_paused(&mut self, t: usize, p: i32, held: Option<Held>) {
        let paused = held.is_some();
        if !self.intake.set_paused(t, p, paused) {
            return;
        }
        let topic = &**self.parts.name(t);
        let stats = self.dispatcher.stats();
        stats.set_paused(topic, p, paused);
        if held == Some(Held::Window) {
            stats.window_pauses.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            subscriber = &*self.settings.name,
            topic,
            partition = p,
            paused,
            "backpressure: partition {}",
            held.map_or_else(|| "resumed".to_owned(), |held| format!("paused: {}", held.reason()))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::commit::CommitRequest;
    use super::super::finished::Finished;
    use super::super::test_util::TestEngine;
    use crate::message::Message;
    use crate::subscriber::Subscriber;

    fn engine() -> TestEngine {
        let mut te = TestEngine::new(&Subscriber::new("s", ["t"], "g", |_m: Message| async {}));
        te.assign("t", 1);
        te
    }

    /// Partition 0's committed metadata said {12} finished above 10.
    fn inherit_12_above_10(te: &mut TestEngine) {
        let mut set = Finished::default();
        set.push(12);
        te.engine.parts.inherit(0, 0, set, 10);
    }

    fn stale(te: &TestEngine) -> u64 {
        te.engine.dispatcher.stats().snapshot().commit_metadata_stale
    }

    /// Reading that starts below the committed offset the inherited set
    /// came with (the log was truncated or recreated, and the fetch reset
    /// to its start): the set is not used, so offset 12 is handled.
    #[test]
    fn a_read_that_starts_below_the_committed_offset_drops_the_inherited_set() {
        let mut te = engine();
        inherit_12_above_10(&mut te);
        te.engine.enqueue(0, Message::new("t", 0, 3), 0);
        assert_eq!(stale(&te), 1);
        for o in 4..=12 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        assert_eq!(te.engine.waiting.len(), 10, "12 waits to be handled");
        // Starting at the committed offset, the set is used.
        let mut te = engine();
        inherit_12_above_10(&mut te);
        for o in 10..=12 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        assert_eq!((stale(&te), te.engine.waiting.len()), (0, 2), "12 is skipped");
    }

    /// The partition's position goes back within the assignment (a reset
    /// after the log was truncated): its tracking starts afresh, the
    /// inherited set is dropped, and the committer forgets what the old
    /// epoch asked for and was not committed yet (a position and finished
    /// offsets of the log before the reset).
    #[test]
    fn a_position_that_goes_back_forgets_the_old_epochs_commit() {
        let mut te = engine();
        inherit_12_above_10(&mut te);
        for o in 10..=11 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        let old = te.engine.parts.epoch(0, 0).unwrap();
        for o in 10..=11 {
            te.engine.parts.finish(0, 0, o);
        }
        te.engine.maybe_commit(true);
        assert!(matches!(
            &te.requests()[..],
            [CommitRequest::Positions(w)] if w[0].epoch == old && w[0].offset == 12 && w[0].metadata.is_some()
        ));
        te.engine.enqueue(0, Message::new("t", 0, 3), 7);
        let parts = &te.engine.parts;
        assert!(parts.epoch(0, 0).unwrap() > old && !parts.inherits(0, 0));
        assert_eq!(stale(&te), 1);
        assert!(
            matches!(&te.requests()[..], [CommitRequest::Forget(f)] if f[0].1 == old),
            "the old epoch's pending commit is forgotten"
        );
    }
    /// The position goes back (to 11) past a record read before that has
    /// not finished (10): the new assignment reads again from 10, so it
    /// cannot commit past it (the model test's first shrunk case: the old
    /// epoch's unfinished record was dropped and its new commits passed
    /// it). What comes past 10 before the move back takes effect is not
    /// taken.
    #[test]
    fn a_position_that_goes_back_past_an_unfinished_record_reads_again_from_it() {
        let mut te = engine();
        for o in 10..=12 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        let old = te.engine.parts.epoch(0, 0).unwrap();
        te.engine.enqueue(0, Message::new("t", 0, 11), 0);
        assert!(te.engine.parts.epoch(0, 0).unwrap() > old);
        assert_eq!(
            te.engine.waiting.len(),
            0,
            "11 is not taken; nothing of the old epoch waits"
        );
        te.engine.enqueue(0, Message::new("t", 0, 12), 0);
        assert_eq!(
            te.engine.waiting.len(),
            0,
            "12, before the move back took effect, is not taken"
        );
        for o in 10..=12 {
            te.engine.enqueue(0, Message::new("t", 0, o), 0);
        }
        assert_eq!(te.engine.waiting.len(), 3, "read again from 10");
    }
}

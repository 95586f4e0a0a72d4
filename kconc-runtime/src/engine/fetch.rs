//! Fetching under backpressure: each assigned partition's own queue is read
//! only while the engine has room (`max_buffered`, the partition's share of
//! it, `max_uncommitted`); what is read is enqueued in the schedule. Also
//! the records librdkafka cannot read, and the watermarks health reports.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::Offset;

use super::batch_end::BatchEnd;
use super::commit::CommitRequest;
use super::event::MessageTag;
use super::ffi::Polled;
use super::rebalance::ClientHooks;
use super::{ffi, Engine, Held, PartitionState, Unreadable, FILL_READS, PARTITION_BATCH};
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
        if now.saturating_sub(self.last_watermarks) < 1000 {
            return;
        }
        self.last_watermarks = now;
        let mut marks = Vec::new();
        let mut progress = std::collections::BTreeMap::new();
        for &(t, p) in &self.order {
            let topic = &*self.topics[t].name;
            if let Some(high) = ffi::cached_high_watermark(consumer, topic, p) {
                marks.push(((topic.to_owned(), p), high));
            }
            if let Some(ps) = self.topics[t].partitions.get(&p) {
                let waiting = ps.offsets.window(ps.committed) > 0;
                progress.insert((topic.to_owned(), p), (ps.progress_ms, waiting));
            }
        }
        if let Ok(mut map) = stats.high_watermarks.lock() {
            map.extend(marks);
        }
        if let Ok(mut map) = stats.progress.lock() {
            *map = progress;
        }
        // librdkafka reports an unreadable batch again at every refetch;
        // where the partition stopped there, nothing else comes: drop them.
        for ts in &self.topics {
            for ps in ts
                .partitions
                .values()
                .filter(|ps| ps.stopped.is_some() && ps.unreadable.is_some())
            {
                if let Some(q) = &ps.queue {
                    while !matches!(q.poll(&ts.name), Polled::Empty) {}
                }
            }
        }
    }

    /// Takes in a record read from partition `msg.partition()` of topic
    /// `t`, written in leader epoch `leader_epoch`: into the schedule, or
    /// counted finished when the committed metadata says it finished before.
    pub(super) fn enqueue(&mut self, t: usize, msg: Message, leader_epoch: i32) {
        self.dispatcher.stats().received.fetch_add(1, Ordering::Relaxed);
        let Some(ps) = self.topics[t].partitions.get_mut(&msg.partition()) else {
            return;
        };
        // A record at or past where the fetch was moved after an unreadable
        // batch: that is past the batch. If it is not where the batch
        // ends, the search goes back below it, and the record is not taken
        // (it is read again).
        if let Some(mut u) = ps.unreadable {
            if let Some(probe) = u.probe.filter(|&probe| msg.offset() >= probe) {
                match u.search.as_mut().and_then(|s| s.past(probe)) {
                    None => ps.unreadable = None,
                    Some(next) => {
                        u.probe = Some(next);
                        ps.unreadable = Some(u);
                        self.move_fetch(t, msg.partition(), next);
                        return;
                    }
                }
            }
        }
        let mut first = ps.offsets.is_untouched();
        let dropped = (first && ps.start_reading(msg.offset())).then_some(ps.inherited_base);
        let mut epoch = ps.epoch;
        let dispatched = ps.offsets.dispatched(msg.offset());
        let done_before = dispatched && ps.finished_before(msg.offset());
        if dispatched {
            ps.leader_epochs.read(msg.offset(), leader_epoch);
        }
        if let Some(base) = dropped {
            self.stale_below(t, msg.partition(), base, msg.offset());
        }
        if !dispatched {
            // The partition's position went back within the assignment (a
            // reset after log truncation, say): what comes now was never
            // handled, so it is handled, as in a new assignment.
            tracing::warn!(
                subscriber = &*self.settings.name,
                topic = &*self.topics[t].name,
                partition = msg.partition(),
                offset = msg.offset(),
                "the partition's position went back; handling from there as a new assignment"
            );
            self.restart_partition(t, msg.partition());
            let Some(ps) = self.topics[t].partitions.get_mut(&msg.partition()) else {
                return;
            };
            ps.offsets.dispatched(msg.offset());
            ps.leader_epochs.read(msg.offset(), leader_epoch);
            (first, epoch) = (true, ps.epoch);
        }
        let slot = MessageTag {
            topic: t,
            partition: msg.partition(),
            epoch,
            lane: None,
        };
        if first {
            self.dispatcher
                .stats()
                .set_fetch_start(&self.topics[t].name, msg.partition(), msg.offset());
        }
        if done_before {
            // Finished before (the committed metadata says so): it counts as
            // finished without a handler. It enters no lane: in key or
            // partition order its earlier messages had finished before it.
            self.count_done_before();
            return;
        }
        self.waiting.push(slot, msg);
        self.dispatcher
            .stats()
            .max_waiting
            .fetch_max(self.buffered() as u64, Ordering::Relaxed);
    }

    /// Reports that partition `p` of topic `t` starts reading at `first`,
    /// below the committed offset `base` its inherited set came with.
    fn stale_below(&self, t: usize, p: i32, base: i64, first: i64) {
        self.stale(
            t,
            p,
            base,
            &format!(
                "reading starts at offset {first}, below it (the log was truncated, or deleted and created again)"
            ),
        );
    }

    /// Counts a message passed as finished before (see
    /// `PartitionState::finished_before`): toward the next commit, and in
    /// `skipped_already_done`.
    fn count_done_before(&mut self) {
        self.finished_since_commit += 1;
        self.dispatcher.stats().already_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages read and not started: waiting for a slot or their lane,
    /// or for their retry. What `max_buffered` bounds.
    pub(super) fn buffered(&self) -> usize {
        self.waiting.len() + self.delayed.len()
    }

    /// Why partition `ps` (`p` of topic `t`) is not read now, if it is not.
    pub(super) fn held_back(&self, t: usize, p: i32, ps: &PartitionState, share: usize) -> Option<Held> {
        if self.waiting.blocked(t, p) >= share {
            return Some(Held::Share);
        }
        (ps.offsets.window(ps.committed) >= self.settings.max_uncommitted as u64).then_some(Held::Window)
    }

    /// Reads partition queues, a batch from each in turn, while fewer than
    /// `max_buffered` messages wait (retries included) and the partition is
    /// not held back (see [`Engine::held_back`]), up to `FILL_READS`
    /// messages. Returns how many it read.
    pub(super) fn fill(&mut self) -> usize {
        if self.closing || self.order.is_empty() {
            return 0;
        }
        let n = self.order.len();
        let share = (self.settings.max_buffered / n).max(1);
        let mut windows_full = Vec::new();
        for i in 0..n {
            let (t, p) = self.order[i];
            let held = self.topics[t]
                .partitions
                .get(&p)
                .and_then(|ps| self.held_back(t, p, ps, share));
            if held == Some(Held::Window) {
                windows_full.push((t, p));
            }
            self.set_paused(t, p, held);
        }
        // A partition held by its uncommitted window waits for its commits:
        // what of it finished is asked for at once, not at the batch size or
        // the interval (which may be far off).
        if !windows_full.is_empty() {
            let positions = self.positions(&windows_full);
            if !positions.is_empty() {
                self.committer.request(CommitRequest::Positions(positions));
            }
        }
        let mut read = 0;
        loop {
            let mut progress = false;
            for i in 0..n {
                let (t, p) = self.order[(self.next_turn + i) % n];
                for _ in 0..PARTITION_BATCH {
                    if self.buffered() >= self.settings.max_buffered || read >= FILL_READS {
                        // The next turn starts after this partition, so a
                        // deep partition cannot starve the others.
                        self.next_turn = (self.next_turn + i + 1) % n;
                        return read;
                    }
                    let topic = &self.topics[t];
                    let Some(ps) = topic.partitions.get(&p).filter(|ps| ps.stopped.is_none()) else {
                        break;
                    };
                    if let Some(held) = self.held_back(t, p, ps, share) {
                        self.set_paused(t, p, Some(held));
                        break;
                    }
                    let polled = match &ps.queue {
                        Some(q) => q.poll(&topic.name),
                        None => Polled::Empty,
                    };
                    match polled {
                        Polled::Message(msg, leader_epoch) => {
                            self.enqueue(t, msg, leader_epoch);
                            read += 1;
                            progress = true;
                            // Started as soon as read while slots are free:
                            // a handler that ends on its first poll then
                            // frees its record before the next is read.
                            if self.running < self.settings.concurrency {
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
            self.next_turn = (self.next_turn + 1) % n;
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
                topic = &*self.topics[t].name,
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
    /// [`BatchEnd`]), so no readable record after it is passed over.
    ///
    /// Where the committed metadata lists the batch's offsets as finished
    /// (its previous owner routed it already), the fetch is moved past them
    /// without the policy, but only as far as they are listed: the first
    /// offset of the batch it does not list goes through the policy from
    /// there (the previous owner had read the batch, and its records there
    /// had not finished).
    pub(super) fn unreadable(&mut self, t: usize, p: i32, at: i64, code: RDKafkaErrorCode, reason: &str) {
        let Some(ps) = self.topics[t].partitions.get_mut(&p) else {
            return;
        };
        if ps.stopped.is_some() {
            // Reported again while the partition stands stopped there.
            return;
        }
        if let Some(mut u) = ps.unreadable.filter(|u| u.at == at) {
            // The fetch moved to `probe` is still inside the batch.
            let Some(probe) = u.probe else {
                return;
            };
            if let Some(search) = u.search.as_mut() {
                let next = search.inside(probe);
                u.probe = Some(next);
                ps.unreadable = Some(u);
                self.move_fetch(t, p, next);
            } else if ps.inherited_lists(probe) {
                self.count_done_before();
                self.pass_listed(t, p, at, probe + 1);
            } else {
                ps.offsets.dispatched(probe);
                self.route_unreadable(t, p, at, probe, code, reason);
            }
            return;
        }
        if let Some(mut u) = ps.unreadable.filter(|u| u.search.is_some() && at > u.at) {
            // Another unreadable batch, where the fetch was moved to find
            // the end of this one: that is past it.
            let past = u.probe.zip(u.search.as_mut());
            if let Some(next) = past.and_then(|(probe, search)| search.past(probe.min(at))) {
                u.probe = Some(next);
                ps.unreadable = Some(u);
                self.move_fetch(t, p, next);
                return;
            }
            // It ends where the other begins, which comes next.
            ps.unreadable = None;
        }
        if ps.offsets.last_dispatched().is_some_and(|last| at <= last) {
            // A report of what is already passed: nothing new.
            return;
        }
        if ps.offsets.is_untouched() && ps.start_reading(at) {
            let base = ps.inherited_base;
            self.stale_below(t, p, base, at);
        }
        let Some(ps) = self.topics[t].partitions.get_mut(&p) else {
            return;
        };
        ps.offsets.dispatched(at);
        if ps.finished_before(at) {
            // The previous owner already routed it (the committed metadata
            // lists it): move past it without doing so again, as far as
            // the metadata lists the batch.
            self.count_done_before();
            self.pass_listed(t, p, at, at + 1);
            return;
        }
        self.route_unreadable(t, p, at, at, code, reason);
    }

    /// Routes the unreadable batch reported at `at`, from its offset
    /// `from` on (already dispatched), through the error policy (see
    /// [`Engine::unreadable`]).
    fn route_unreadable(&mut self, t: usize, p: i32, at: i64, from: i64, code: RDKafkaErrorCode, reason: &str) {
        let topic = self.topics[t].name.clone();
        let Some(ps) = self.topics[t].partitions.get_mut(&p) else {
            return;
        };
        let slot = MessageTag {
            topic: t,
            partition: p,
            epoch: ps.epoch,
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
                ps.stop_at(from);
                ps.unreadable = Some(Unreadable {
                    at,
                    probe: None,
                    search: None,
                });
                let stats = self.dispatcher.stats();
                stats.stopped.fetch_add(1, Ordering::Relaxed);
                stats.set_stopped(&topic, p, Some((from, error)));
                self.forget_unstarted_from(t, p, from);
            }
            OnError::Skip => {
                self.dispatcher.stats().skipped.fetch_add(1, Ordering::Relaxed);
                ps.offsets.finished(from);
                self.finished_since_commit += 1;
                self.search_end(t, p, at, from);
            }
            OnError::DeadLetter(_) => {
                ps.running += 1;
                self.running += 1;
                self.dispatcher.dead_letter(slot, Message::new(&topic, p, from), error);
                self.dispatcher.flush();
                self.search_end(t, p, at, from);
            }
        }
    }

    /// Moves the fetch of partition `p` (past an unreadable batch at `at`)
    /// to `to`, one offset further than the last: the metadata listed every
    /// offset of the batch before `to`.
    fn pass_listed(&mut self, t: usize, p: i32, at: i64, to: i64) {
        if let Some(ps) = self.topics[t].partitions.get_mut(&p) {
            ps.unreadable = Some(Unreadable {
                at,
                probe: Some(to),
                search: None,
            });
        }
        self.move_fetch(t, p, to);
    }

    /// Starts the search for the end of the unreadable batch at `at`, whose
    /// offsets up to `from` are routed (see [`BatchEnd`]).
    fn search_end(&mut self, t: usize, p: i32, at: i64, from: i64) {
        let end = self
            .consumer
            .upgrade()
            .and_then(|c| ffi::cached_high_watermark(&c, &self.topics[t].name, p));
        let search = BatchEnd::from(from, end);
        let probe = search.probe();
        if let Some(ps) = self.topics[t].partitions.get_mut(&p) {
            ps.unreadable = Some(Unreadable {
                at,
                probe: Some(probe),
                search: Some(search),
            });
        }
        self.move_fetch(t, p, probe);
    }

    /// Moves the fetch of partition `p` of topic `t` to `to`.
    fn move_fetch(&mut self, t: usize, p: i32, to: i64) {
        self.dispatcher
            .stats()
            .unreadable_probes
            .fetch_add(1, Ordering::Relaxed);
        let topic = self.topics[t].name.clone();
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        if let Err(e) = consumer.seek(&topic, p, Offset::Offset(to), Duration::ZERO) {
            tracing::warn!(
                subscriber = &*self.settings.name, topic = &*topic, partition = p, offset = to, error = %e,
                "cannot move the fetch past unreadable records; trying again at the next report"
            );
        }
    }

    /// Marks a partition paused (`Some(why)`) or resumed by backpressure,
    /// logging and counting the change.
    pub(super) fn set_paused(&mut self, t: usize, p: i32, held: Option<Held>) {
        let Some(ps) = self.topics[t].partitions.get_mut(&p) else {
            return;
        };
        let paused = held.is_some();
        if ps.paused == paused {
            return;
        }
        ps.paused = paused;
        let topic = &*self.topics[t].name;
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
        let ps = te.engine.topics[0].partitions.get_mut(&0).unwrap();
        let mut set = Finished::default();
        set.push(12);
        (ps.inherited, ps.inherited_base) = (set, 10);
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
        let old = te.engine.topics[0].partitions[&0].epoch;
        for o in 10..=11 {
            te.engine.topics[0].partitions.get_mut(&0).unwrap().offsets.finished(o);
        }
        te.engine.maybe_commit(true);
        assert!(matches!(
            &te.requests()[..],
            [CommitRequest::Positions(w)] if w[0].epoch == old && w[0].offset == 12 && w[0].metadata.is_some()
        ));
        te.engine.enqueue(0, Message::new("t", 0, 3), 7);
        let ps = &te.engine.topics[0].partitions[&0];
        assert!(ps.epoch > old && ps.inherited.is_empty());
        assert_eq!(stale(&te), 1);
        assert!(
            matches!(&te.requests()[..], [CommitRequest::Forget(f)] if f[0].1 == old),
            "the old epoch's pending commit is forgotten"
        );
    }
}

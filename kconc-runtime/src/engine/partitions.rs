//! The partitions: each assigned partition's state in its assignment (its
//! epoch, offsets, queue, running handlers, stop, revoke, the finished set
//! inherited from its committed metadata, an unreadable batch being moved
//! past, what was asked to commit and what was committed), and how many
//! handlers run in all. Only this file changes that state: the engine asks
//! with methods that return decisions.

use std::sync::Arc;

use super::batch_end::BatchEnd;
use super::commit::{Assigned, Wanted};
use super::event::{MessageTag, PartitionKey};
use super::ffi::{PartitionQueue, Polled};
use super::finished::{self, Finished};
use super::hash::SmallKeyMap;
use super::offsets::{LeaderEpochs, OffsetTracker};

/// Every assigned partition, by topic (a topic's index never changes), and
/// the handlers running.
#[derive(Debug, Default)]
pub(super) struct Partitions {
    topics: Vec<TopicState>,
    next_epoch: u64,
    /// Handlers running now, all partitions (those of a partition since
    /// dropped too, until they end): what `concurrency` bounds.
    running: usize,
}

#[derive(Debug)]
struct TopicState {
    name: Arc<str>,
    partitions: SmallKeyMap<i32, PartitionState>,
}

struct PartitionState {
    epoch: u64,
    offsets: OffsetTracker,
    /// Handlers of this partition running now.
    running: usize,
    /// This partition's own message queue (see the engine's docs).
    queue: Option<PartitionQueue>,
    /// The last position handed to the committer.
    requested: Option<i64>,
    /// How many offsets above it had finished then (with commit metadata:
    /// more finished is a new commit of the same position).
    requested_above: usize,
    /// Offsets the committed metadata says finished before this assignment
    /// (see `finished`), from the first not read yet: they are skipped
    /// when read, and committed as finished until they are. Only for the
    /// log they were written for: dropped at assignment when one of them is
    /// at or past the log's end, and when the first offset read is below
    /// `inherited_base` (see `start_reading`).
    inherited: Finished,
    /// The committed offset `inherited` was written with.
    inherited_base: i64,
    /// The leader epochs of the records read, for the commits.
    leader_epochs: LeaderEpochs,
    /// Stopped by the error policy at this offset: never read again in this
    /// assignment, and nothing at or after it starts; what comes before it
    /// still runs (and is retried) in its lane's order, and is committed.
    stopped: Option<i64>,
    /// Being revoked: nothing of it starts or is retried any more.
    revoking: bool,
    /// The position the committer last committed in this assignment.
    committed: Option<i64>,
    /// Where the partition was moved back to read from (see
    /// [`Read::Back`]), until a record at or below it is read.
    resume: Option<i64>,
    /// When `committed` last moved (or the partition was assigned), in
    /// Unix milliseconds: how long its commits have stalled.
    progress_ms: u64,
    /// A record batch librdkafka cannot read: where it is, and the
    /// position the partition is being moved past it to, if it is.
    unreadable: Option<Unreadable>,
}

impl std::fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState")
            .field("epoch", &self.epoch)
            .field("running", &self.running)
            .field("split", &self.queue.is_some())
            .finish_non_exhaustive()
    }
}

/// An unreadable record batch of a partition (see [`Partitions::unreadable`]).
#[derive(Clone, Copy, Debug)]
struct Unreadable {
    /// The batch's first offset, as librdkafka reports it.
    at: i64,
    /// Where the fetch was last moved to, to find the end of the batch:
    /// `None` once the partition is stopped there.
    probe: Option<i64>,
    /// The search for the batch's end; `None` while the committed metadata
    /// lists every offset of the batch before `probe` as finished before
    /// (they are moved past without the policy, one at a time: each must be
    /// listed), or once the partition is stopped there.
    search: Option<BatchEnd>,
}

/// What to do with a record read from a partition's queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// The partition is not assigned (any more): drop it.
    Gone,
    /// It is past where the fetch was moved to find the end of an
    /// unreadable batch, but the batch does not end there: move the fetch
    /// to this offset; the record is read again.
    Seek(i64),
    /// The partition's position went back within the assignment: start it
    /// afresh ([`Partitions::restart`]). Where something read before, below
    /// this record, has not finished (`reread_from`: the lowest such
    /// offset), the partition reads again from there ([`Partitions::resume_at`]
    /// and a seek; this record is read again): its handling was given up
    /// with the old assignment, and the new one must not commit past it.
    /// Else this record is taken ([`Partitions::read_again`]).
    Back { reread_from: Option<i64> },
    /// The partition was moved back to read from `resume` (see
    /// [`Read::Back`]), and this record is past it: the seek there has not
    /// taken effect; make it again. The record is not taken.
    Reread(i64),
    /// Taken, in assignment `epoch`: the first of it (`first`); where the
    /// inherited set was dropped because reading starts below the committed
    /// offset it came with, that offset (`stale`); whether the committed
    /// metadata says it finished before (it is then finished, not handled).
    Take {
        epoch: u64,
        first: bool,
        stale: Option<i64>,
        done_before: bool,
    },
}

/// What to do about an unreadable record batch librdkafka reported.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BatchStep {
    /// Nothing new (reported again, already passed, or stopped there).
    Ignore,
    /// Move the fetch to this offset, to find where the batch ends.
    Seek(i64),
    /// The offset before `to` finished before (the committed metadata lists
    /// it): it counts as finished, and the fetch moves to `to` through
    /// [`Partitions::pass_listed`]. `stale` as in [`Read::Take`].
    PassListed { to: i64, stale: Option<i64> },
    /// Route the batch from offset `from` (dispatched now) through the
    /// error policy. `stale` as in [`Read::Take`].
    Route { from: i64, stale: Option<i64> },
}

/// What a partition restarted afresh had.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Restarted {
    pub(super) old_epoch: u64,
    /// The committed offset of the inherited set it dropped, if it had one.
    pub(super) inherited_base: Option<i64>,
}

impl PartitionState {
    fn new(epoch: u64, queue: Option<PartitionQueue>) -> Self {
        PartitionState {
            epoch,
            offsets: OffsetTracker::default(),
            running: 0,
            queue,
            requested: None,
            requested_above: 0,
            inherited: Finished::default(),
            inherited_base: 0,
            leader_epochs: LeaderEpochs::default(),
            stopped: None,
            revoking: false,
            committed: None,
            resume: None,
            progress_ms: crate::stats::unix_ms(),
            unreadable: None,
        }
    }

    /// Stops the partition at `offset` (or keeps an earlier stop).
    fn stop_at(&mut self, offset: i64) {
        self.stopped = Some(self.stopped.map_or(offset, |s| s.min(offset)));
    }

    /// Whether a stop holds the message at `offset` back.
    fn holds_back(&self, offset: i64) -> bool {
        self.stopped.is_some_and(|s| offset >= s)
    }

    /// Called with the first offset this assignment reads: a read that
    /// starts below the committed offset the inherited set came with means
    /// the log is not the one the set was written for (truncated, or
    /// deleted and created again, and the fetch reset to its start), so
    /// the set is dropped. Returns the offset it came with, if it was.
    fn start_reading(&mut self, first: i64) -> Option<i64> {
        if self.inherited.is_empty() || first >= self.inherited_base {
            return None;
        }
        self.inherited = Finished::default();
        Some(self.inherited_base)
    }

    /// Whether the inherited set lists `offset` (what it lists below is
    /// dropped: it is read past).
    fn inherited_lists(&mut self, offset: i64) -> bool {
        self.inherited.drop_below(offset);
        self.inherited.contains(offset)
    }

    /// Whether `offset`, just dispatched, finished before this assignment
    /// (the committed metadata lists it); if so it is recorded finished.
    /// What the metadata lists below it is dropped: it is read past.
    fn finished_before(&mut self, offset: i64) -> bool {
        if self.inherited.is_empty() || !self.inherited_lists(offset) {
            return false;
        }
        self.offsets.finished(offset);
        true
    }

    /// The metadata to commit with position `pos`: the offsets finished
    /// above it, here and (not read yet) inherited.
    fn metadata_at(&self, pos: i64) -> Option<finished::Encoded> {
        let mut set = Finished::default();
        self.offsets.finished_set().for_each(|o| set.push(o));
        let read_up_to = self.offsets.last_dispatched().map_or(i64::MIN, |l| l + 1);
        for &(s, e) in self.inherited.ranges() {
            set.push_range(s.max(read_up_to), e);
        }
        finished::encode(pos, &set, finished::MAX_METADATA)
    }
}

impl Partitions {
    fn get(&self, t: usize, p: i32) -> Option<&PartitionState> {
        self.topics.get(t)?.partitions.get(&p)
    }

    fn get_mut(&mut self, t: usize, p: i32) -> Option<&mut PartitionState> {
        self.topics.get_mut(t)?.partitions.get_mut(&p)
    }

    /// The state of `tag`'s partition, if it is still `tag`'s assignment.
    fn live_mut(&mut self, tag: MessageTag) -> Option<&mut PartitionState> {
        self.get_mut(tag.topic, tag.partition)
            .filter(|ps| ps.epoch == tag.epoch)
    }

    // Topics and assignment.

    /// The index of topic `name`, from now on.
    pub(super) fn topic(&mut self, name: &str) -> usize {
        if let Some(t) = self.find(name) {
            return t;
        }
        self.topics.push(TopicState {
            name: Arc::from(name),
            partitions: SmallKeyMap::default(),
        });
        self.topics.len() - 1
    }

    /// The index of topic `name`, if it has one.
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| &*t.name == name)
    }

    /// Topic `t`'s name.
    pub(super) fn name(&self, t: usize) -> &Arc<str> {
        &self.topics[t].name
    }

    /// Partition `p` of topic `t`, as the committer keys it.
    pub(super) fn key(&self, t: usize, p: i32) -> PartitionKey {
        PartitionKey {
            topic: self.topics[t].name.clone(),
            partition: p,
        }
    }

    /// Every assigned partition.
    pub(super) fn all(&self) -> Vec<(usize, i32)> {
        let mut out = Vec::new();
        self.all_into(&mut out);
        out
    }

    /// [`Partitions::all`], into `out` (emptied first).
    pub(super) fn all_into(&self, out: &mut Vec<(usize, i32)>) {
        out.clear();
        out.extend(
            self.topics
                .iter()
                .enumerate()
                .flat_map(|(t, ts)| ts.partitions.keys().map(move |&p| (t, p))),
        );
    }

    /// The assignment (epoch) of each of `parts` that is assigned.
    pub(super) fn assigned(&self, parts: &[(usize, i32)]) -> Vec<Assigned> {
        parts
            .iter()
            .filter_map(|&(t, p)| Some((self.key(t, p), self.get(t, p)?.epoch)))
            .collect()
    }

    /// The epoch of partition `p` of topic `t`'s assignment, if assigned.
    pub(super) fn epoch(&self, t: usize, p: i32) -> Option<u64> {
        self.get(t, p).map(|ps| ps.epoch)
    }

    /// Takes the queue of a partition assigned before (it is assigned again
    /// without a revoke in between): dropping it first disables the wake-up
    /// callback of the librdkafka queue the new handle will share.
    pub(super) fn take_queue(&mut self, t: usize, p: i32) -> Option<PartitionQueue> {
        self.get_mut(t, p)?.queue.take()
    }

    /// Assigns partition `p` of topic `t` afresh (a new epoch), reading
    /// `queue`; returns its epoch.
    pub(super) fn assign(&mut self, t: usize, p: i32, queue: Option<PartitionQueue>) -> u64 {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.topics[t].partitions.insert(p, PartitionState::new(epoch, queue));
        epoch
    }

    /// Keeps the finished offsets `set` the committed metadata of partition
    /// `p` lists above its committed offset `base`, to skip them.
    pub(super) fn inherit(&mut self, t: usize, p: i32, set: Finished, base: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            (ps.inherited, ps.inherited_base) = (set, base);
        }
    }

    /// Marks a partition as being revoked; `false` if it is not assigned.
    pub(super) fn revoke(&mut self, t: usize, p: i32) -> bool {
        self.get_mut(t, p).map(|ps| ps.revoking = true).is_some()
    }

    /// Drops a partition's state; returns whether it was stopped.
    pub(super) fn remove(&mut self, t: usize, p: i32) -> Option<bool> {
        let ps = self.topics.get_mut(t)?.partitions.remove(&p)?;
        Some(ps.stopped.is_some())
    }

    /// Starts a partition's tracking afresh (a new epoch) on its queue:
    /// nothing of the old epoch counts any more, nothing inherited is kept.
    pub(super) fn restart(&mut self, t: usize, p: i32) -> Option<Restarted> {
        let (queue, restarted) = match self.get_mut(t, p) {
            Some(old) => {
                let inherited_base = (!old.inherited.is_empty()).then_some(old.inherited_base);
                let restarted = Restarted {
                    old_epoch: old.epoch,
                    inherited_base,
                };
                (old.queue.take(), Some(restarted))
            }
            None => (None, None),
        };
        self.assign(t, p, queue);
        restarted
    }

    // Handlers.

    /// Handlers running now, all partitions.
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// The handlers of `parts` running now.
    pub(super) fn in_flight(&self, parts: &[(usize, i32)]) -> usize {
        parts
            .iter()
            .filter_map(|&(t, p)| self.get(t, p))
            .map(|ps| ps.running)
            .sum()
    }

    /// A handler of `tag` starts.
    pub(super) fn started(&mut self, tag: MessageTag) {
        if let Some(ps) = self.get_mut(tag.topic, tag.partition) {
            ps.running += 1;
        }
        self.running += 1;
    }

    /// A handler of `tag` ended (finished, failed, or given up): its slot is
    /// free. Returns its partition if the assignment is still `tag`'s (else
    /// its outcome counts for nothing here).
    pub(super) fn ended(&mut self, tag: MessageTag) -> Option<Ended<'_>> {
        self.running = self.running.saturating_sub(1);
        let ps = self.live_mut(tag)?;
        ps.running = ps.running.saturating_sub(1);
        Some(Ended(ps))
    }

    /// Whether a retry of `tag`'s message at `offset` may start now: still
    /// its assignment, not stopped there, not being revoked.
    pub(super) fn may_retry(&self, tag: MessageTag, offset: i64) -> bool {
        self.get(tag.topic, tag.partition)
            .is_some_and(|ps| ps.epoch == tag.epoch && !ps.holds_back(offset) && !ps.revoking)
    }

    /// Records that offset `offset` of partition `p` finished (skipped by
    /// the error policy, say).
    pub(super) fn finish(&mut self, t: usize, p: i32, offset: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            ps.offsets.finished(offset);
        }
    }

    /// Stops partition `p` at `offset` (see `PartitionState::stopped`).
    pub(super) fn stop(&mut self, t: usize, p: i32, offset: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            ps.stop_at(offset);
        }
    }

    /// Records that the committer committed `offset` of assignment `epoch`
    /// of `key`, where that is still the assignment.
    pub(super) fn committed(&mut self, key: &PartitionKey, epoch: u64, offset: i64) {
        let Some(t) = self.topics.iter().position(|t| t.name == key.topic) else {
            return;
        };
        if let Some(ps) = self.get_mut(t, key.partition).filter(|ps| ps.epoch == epoch) {
            if ps.committed.is_none_or(|c| offset > c) {
                ps.committed = Some(offset);
                ps.progress_ms = crate::stats::unix_ms();
            }
        }
    }

    // Reading.

    /// How many offsets of partition `p` were read past its last committed
    /// one (its uncommitted window), if it is assigned.
    pub(super) fn window(&self, t: usize, p: i32) -> Option<u64> {
        self.get(t, p).map(|ps| ps.offsets.window(ps.committed))
    }

    /// Partition `p`'s uncommitted window (see [`Partitions::window`]) if it
    /// is assigned and read (not stopped): what the intake asks of a
    /// partition before it reads it, in one look.
    pub(super) fn read_window(&self, t: usize, p: i32) -> Option<u64> {
        self.get(t, p)
            .filter(|ps| ps.stopped.is_none())
            .map(|ps| ps.offsets.window(ps.committed))
    }

    /// The next record or error of partition `p`'s queue.
    /// With `hold`, a record is not copied (see `ffi::Held`).
    pub(super) fn poll(&self, t: usize, p: i32, hold: bool) -> Polled {
        let topic = &self.topics[t];
        match topic.partitions.get(&p).and_then(|ps| ps.queue.as_ref()) {
            Some(q) => q.poll(&topic.name, hold),
            None => Polled::Empty,
        }
    }

    /// Takes in the record at `offset` of partition `p`, written in leader
    /// epoch `leader_epoch` (see [`Read`]).
    pub(super) fn read(&mut self, t: usize, p: i32, offset: i64, leader_epoch: i32) -> Read {
        let Some(ps) = self.get_mut(t, p) else {
            return Read::Gone;
        };
        // A record at or past where the fetch was moved after an unreadable
        // batch: that is past the batch. If it is not where the batch
        // ends, the search goes back below it, and the record is not taken
        // (it is read again).
        if let Some(mut u) = ps.unreadable {
            if let Some(probe) = u.probe.filter(|&probe| offset >= probe) {
                match u.search.as_mut().and_then(|s| s.past(probe)) {
                    None => ps.unreadable = None,
                    Some(next) => {
                        u.probe = Some(next);
                        ps.unreadable = Some(u);
                        return Read::Seek(next);
                    }
                }
            }
        }
        if let Some(resume) = ps.resume {
            if offset > resume {
                return Read::Reread(resume);
            }
            ps.resume = None;
        }
        let first = ps.offsets.is_untouched();
        let stale = if first { ps.start_reading(offset) } else { None };
        if !ps.offsets.dispatched(offset) {
            let reread_from = ps.offsets.first_unfinished().filter(|&u| u < offset);
            return Read::Back { reread_from };
        }
        let done_before = ps.finished_before(offset);
        ps.leader_epochs.read(offset, leader_epoch);
        Read::Take {
            epoch: ps.epoch,
            first,
            stale,
            done_before,
        }
    }

    /// Partition `p`, just restarted, reads from `offset` (see
    /// [`Read::Back`]): what comes past it before is not taken.
    pub(super) fn resume_at(&mut self, t: usize, p: i32, offset: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            ps.resume = Some(offset);
        }
    }

    /// Takes in the record at `offset` of a partition just restarted (see
    /// [`Read::Back`]); returns its epoch.
    pub(super) fn read_again(&mut self, t: usize, p: i32, offset: i64, leader_epoch: i32) -> Option<u64> {
        let ps = self.get_mut(t, p)?;
        ps.offsets.dispatched(offset);
        ps.leader_epochs.read(offset, leader_epoch);
        Some(ps.epoch)
    }

    /// A record batch starting at `at` of partition `p` that librdkafka
    /// cannot read (see the engine's `unreadable`): what to do next.
    pub(super) fn unreadable(&mut self, t: usize, p: i32, at: i64) -> BatchStep {
        let Some(ps) = self.get_mut(t, p) else {
            return BatchStep::Ignore;
        };
        if ps.stopped.is_some() {
            // Reported again while the partition stands stopped there.
            return BatchStep::Ignore;
        }
        if let Some(mut u) = ps.unreadable.filter(|u| u.at == at) {
            // The fetch moved to `probe` is still inside the batch.
            let Some(probe) = u.probe else {
                return BatchStep::Ignore;
            };
            if let Some(search) = u.search.as_mut() {
                let next = search.inside(probe);
                u.probe = Some(next);
                ps.unreadable = Some(u);
                return BatchStep::Seek(next);
            }
            if ps.inherited_lists(probe) {
                return BatchStep::PassListed {
                    to: probe + 1,
                    stale: None,
                };
            }
            ps.offsets.dispatched(probe);
            return BatchStep::Route {
                from: probe,
                stale: None,
            };
        }
        if let Some(mut u) = ps.unreadable.filter(|u| u.search.is_some() && at > u.at) {
            // Another unreadable batch, where the fetch was moved to find
            // the end of this one: that is past it.
            let past = u.probe.zip(u.search.as_mut());
            if let Some(next) = past.and_then(|(probe, search)| search.past(probe.min(at))) {
                u.probe = Some(next);
                ps.unreadable = Some(u);
                return BatchStep::Seek(next);
            }
            // It ends where the other begins, which comes next.
            ps.unreadable = None;
        }
        if ps.offsets.last_dispatched().is_some_and(|last| at <= last) {
            // A report of what is already passed: nothing new.
            return BatchStep::Ignore;
        }
        let stale = if ps.offsets.is_untouched() {
            ps.start_reading(at)
        } else {
            None
        };
        ps.offsets.dispatched(at);
        if ps.finished_before(at) {
            // The previous owner already routed it (the committed metadata
            // lists it): move past it without doing so again, as far as
            // the metadata lists the batch.
            return BatchStep::PassListed { to: at + 1, stale };
        }
        BatchStep::Route { from: at, stale }
    }

    /// The fetch of partition `p` moves past the unreadable batch at `at`
    /// to `to`, one offset further than the last: the metadata listed
    /// every offset of the batch before it.
    pub(super) fn pass_listed(&mut self, t: usize, p: i32, at: i64, to: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            ps.unreadable = Some(Unreadable {
                at,
                probe: Some(to),
                search: None,
            });
        }
    }

    /// Starts the search for the end of partition `p`'s unreadable batch at
    /// `at`, routed up to `from`, in a log that ends at `end` (if known);
    /// returns where to move the fetch first.
    pub(super) fn search_end(&mut self, t: usize, p: i32, at: i64, from: i64, end: Option<i64>) -> i64 {
        let search = BatchEnd::from(from, end);
        let probe = search.probe();
        if let Some(ps) = self.get_mut(t, p) {
            ps.unreadable = Some(Unreadable {
                at,
                probe: Some(probe),
                search: Some(search),
            });
        }
        probe
    }

    /// Stops partition `p` at offset `from` of its unreadable batch at `at`.
    pub(super) fn stop_unreadable(&mut self, t: usize, p: i32, at: i64, from: i64) {
        if let Some(ps) = self.get_mut(t, p) {
            ps.stop_at(from);
            ps.unreadable = Some(Unreadable {
                at,
                probe: None,
                search: None,
            });
        }
    }

    /// Empties the queues of the partitions stopped at an unreadable batch:
    /// librdkafka reports it again at every refetch, and nothing else comes.
    pub(super) fn drain_stopped_unreadable(&self) {
        for ts in &self.topics {
            for ps in ts
                .partitions
                .values()
                .filter(|ps| ps.stopped.is_some() && ps.unreadable.is_some())
            {
                if let Some(q) = &ps.queue {
                    while !matches!(q.poll(&ts.name, true), Polled::Empty) {}
                }
            }
        }
    }

    /// When partition `p`'s commits last moved (Unix milliseconds), and
    /// whether anything read waits to be committed.
    pub(super) fn progress(&self, t: usize, p: i32) -> Option<(u64, bool)> {
        self.get(t, p)
            .map(|ps| (ps.progress_ms, ps.offsets.window(ps.committed) > 0))
    }

    // Commits.

    /// The position of partition `p` to ask the committer for, if it moved
    /// since it was last asked for (or, with commit metadata, the finished
    /// offsets above it did), with its metadata; and whether that metadata
    /// was cut short. Records it as asked for.
    pub(super) fn wanted(&mut self, t: usize, p: i32, metadata: bool) -> Option<(Wanted, bool)> {
        let key = self.key(t, p);
        let ps = self.get_mut(t, p)?;
        let pos = if metadata {
            ps.offsets.commit_point()
        } else {
            ps.offsets.committable()
        }?;
        let above = if metadata { ps.offsets.finished_above() } else { 0 };
        let moved = ps.requested.is_none_or(|r| pos > r);
        if !moved && (ps.requested != Some(pos) || above == ps.requested_above) {
            return None;
        }
        ps.requested = Some(pos);
        ps.requested_above = above;
        let text = if metadata { ps.metadata_at(pos) } else { None };
        let truncated = text.as_ref().is_some_and(|e| e.truncated);
        let wanted = Wanted {
            key,
            epoch: ps.epoch,
            offset: pos,
            metadata: text.map(|e| e.text),
            leader_epoch: ps.leader_epochs.before(pos),
        };
        Some((wanted, truncated))
    }

    /// Whether partition `p` went idle with something to commit: all it
    /// read finished, its queue is empty (a partition without a queue is
    /// never read: it has nothing committable), and its finished prefix is
    /// past what was last asked for.
    pub(super) fn idle(&self, t: usize, p: i32) -> bool {
        self.get(t, p).is_some_and(|ps| {
            ps.offsets.is_settled()
                && ps
                    .offsets
                    .committable()
                    .is_some_and(|c| ps.requested.is_none_or(|r| c > r))
                && ps.queue.as_ref().is_none_or(|q| q.len() == 0)
        })
    }
}

/// The partition of a handler that ended, still in its assignment.
pub(super) struct Ended<'a>(&'a mut PartitionState);

impl Ended<'_> {
    /// Its message at `offset` finished.
    pub(super) fn finish(&mut self, offset: i64) {
        self.0.offsets.finished(offset);
    }

    /// Whether its message at `offset` may be tried again here: not
    /// stopped there, not being revoked.
    pub(super) fn may_retry(&self, offset: i64) -> bool {
        !self.0.holds_back(offset) && !self.0.revoking
    }

    /// Its message at `offset` failed for good under `on_error = stop`.
    pub(super) fn stop(&mut self, offset: i64) {
        self.0.stop_at(offset);
    }
}

/// What the engine's own unit tests look at.
#[cfg(test)]
impl Partitions {
    pub(super) fn holds_back(&self, t: usize, p: i32, offset: i64) -> bool {
        self.get(t, p).is_some_and(|ps| ps.holds_back(offset))
    }

    pub(super) fn inherits(&self, t: usize, p: i32) -> bool {
        self.get(t, p).is_some_and(|ps| !ps.inherited.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions with topic "t" (index 0) and partition 0 assigned.
    fn assigned() -> Partitions {
        let mut parts = Partitions::default();
        let t = parts.topic("t");
        parts.assign(t, 0, None);
        parts
    }

    fn tag(parts: &Partitions, offset_epoch: Option<u64>) -> MessageTag {
        MessageTag {
            topic: 0,
            partition: 0,
            epoch: offset_epoch.unwrap_or_else(|| parts.epoch(0, 0).unwrap()),
            lane: None,
        }
    }

    fn take(parts: &mut Partitions, offset: i64) -> Read {
        parts.read(0, 0, offset, 0)
    }

    #[test]
    fn topics_keep_their_index_and_assignments_get_new_epochs() {
        let mut parts = Partitions::default();
        assert_eq!((parts.topic("a"), parts.topic("b"), parts.topic("a")), (0, 1, 0));
        assert_eq!((parts.find("b"), parts.find("c")), (Some(1), None));
        assert_eq!(&**parts.name(1), "b");
        let first = parts.assign(0, 3, None);
        let second = parts.assign(1, 3, None);
        assert!(second > first);
        assert_eq!(parts.epoch(0, 3), Some(first));
        let mut all = parts.all();
        all.sort_unstable();
        assert_eq!(all, [(0, 3), (1, 3)]);
        let again = parts.assign(0, 3, None);
        assert!(again > second, "an assignment again is a new epoch");
        assert_eq!(parts.key(1, 3).partition, 3);
        assert_eq!(parts.assigned(&[(0, 3), (0, 9)]), [(parts.key(0, 3), again)]);
        assert_eq!(parts.remove(0, 3), Some(false));
        assert_eq!((parts.remove(0, 3), parts.epoch(0, 3)), (None, None));
    }

    #[test]
    fn a_read_is_taken_once_in_offset_order_and_the_first_says_so() {
        let mut parts = assigned();
        let epoch = parts.epoch(0, 0).unwrap();
        let taken = |first| Read::Take {
            epoch,
            first,
            stale: None,
            done_before: false,
        };
        assert_eq!(take(&mut parts, 5), taken(true));
        assert_eq!(take(&mut parts, 7), taken(false));
        assert_eq!(parts.window(0, 0), Some(3), "5 to 7, the gap counted");
        assert_eq!(
            take(&mut parts, 6),
            Read::Back { reread_from: Some(5) },
            "back below 5 and 7, unfinished"
        );
        assert_eq!(parts.read(0, 1, 0, 0), Read::Gone);
    }

    #[test]
    fn handlers_are_counted_per_partition_and_in_all_and_a_gone_epoch_counts_nothing() {
        let mut parts = assigned();
        let _ = take(&mut parts, 0);
        let live = tag(&parts, None);
        parts.started(live);
        parts.started(live);
        assert_eq!((parts.running(), parts.in_flight(&[(0, 0)])), (2, 2));
        parts.ended(live).unwrap().finish(0);
        assert_eq!((parts.running(), parts.in_flight(&[(0, 0)])), (1, 1));
        assert_eq!(parts.wanted(0, 0, false).map(|(w, _)| w.offset), Some(1));
        // Assigned again: the old handler's end frees its slot only.
        parts.assign(0, 0, None);
        assert!(parts.ended(live).is_none());
        assert_eq!((parts.running(), parts.in_flight(&[(0, 0)])), (0, 0));
        assert!(parts.ended(live).is_none());
        assert_eq!(parts.running(), 0, "never below zero");
    }

    #[test]
    fn a_stop_holds_back_its_offset_and_after_and_a_revoke_everything() {
        let mut parts = assigned();
        let live = tag(&parts, None);
        assert!(parts.may_retry(live, 10));
        parts.stop(0, 0, 10);
        parts.stop(0, 0, 12);
        assert!(parts.may_retry(live, 9));
        assert!(
            !parts.may_retry(live, 10) && !parts.may_retry(live, 11),
            "the earlier stop holds"
        );
        assert!(parts.read_window(0, 0).is_none());
        assert_eq!((parts.read_window(0, 0), parts.window(0, 0)), (None, Some(0)));
        let mut ended = {
            parts.started(live);
            parts.ended(live).unwrap()
        };
        assert!(ended.may_retry(9) && !ended.may_retry(10));
        ended.stop(5);
        assert!(parts.holds_back(0, 0, 5) && !parts.holds_back(0, 0, 4));
        assert_eq!(parts.remove(0, 0), Some(true), "it was stopped");

        let mut parts = assigned();
        let live = tag(&parts, None);
        assert!(parts.read_window(0, 0).is_some());
        assert!(parts.revoke(0, 0));
        assert!(!parts.revoke(0, 1), "not assigned");
        assert!(!parts.may_retry(live, 0));
        parts.started(live);
        assert!(!parts.ended(live).unwrap().may_retry(0));
        let old = MessageTag { epoch: 0, ..live };
        assert!(!parts.may_retry(old, 0), "another assignment");
    }

    #[test]
    fn a_commit_is_recorded_only_forward_and_only_for_its_assignment() {
        let mut parts = assigned();
        let epoch = parts.epoch(0, 0).unwrap();
        let key = parts.key(0, 0);
        for o in 0..4 {
            let _ = take(&mut parts, o);
        }
        assert_eq!(parts.window(0, 0), Some(4));
        let before = parts.progress(0, 0).unwrap().0;
        parts.committed(&key, epoch, 3);
        assert_eq!(parts.window(0, 0), Some(1));
        parts.committed(&key, epoch, 2);
        assert_eq!(parts.window(0, 0), Some(1), "not back");
        parts.committed(&key, epoch + 1, 4);
        assert_eq!(parts.window(0, 0), Some(1), "another assignment's");
        let other = PartitionKey {
            topic: Arc::from("other"),
            partition: 0,
        };
        parts.committed(&other, epoch, 4);
        assert_eq!(parts.window(0, 0), Some(1), "another topic's");
        let (after, waiting) = parts.progress(0, 0).unwrap();
        assert!(after >= before && waiting);
        parts.committed(&key, epoch, 4);
        assert_eq!(parts.progress(0, 0).map(|(_, w)| w), Some(false));
        assert_eq!(parts.progress(0, 1), None);
    }

    #[test]
    fn a_position_is_wanted_once_it_moves_and_again_when_more_finished_above_it() {
        let mut parts = assigned();
        for o in 10..15 {
            let _ = take(&mut parts, o);
        }
        assert!(parts.wanted(0, 0, false).is_none(), "nothing finished");
        assert!(parts.wanted(0, 0, true).is_none(), "nothing finished");
        parts.finish(0, 0, 12);
        assert!(parts.wanted(0, 0, false).is_none(), "no prefix yet");
        let (w, truncated) = parts.wanted(0, 0, true).unwrap();
        assert_eq!((w.offset, w.epoch, truncated), (10, parts.epoch(0, 0).unwrap(), false));
        let listed = finished::decode(w.metadata.unwrap().as_bytes(), 10).unwrap();
        assert_eq!(listed.ranges(), [(12, 13)]);
        assert!(parts.wanted(0, 0, true).is_none(), "asked for already");
        parts.finish(0, 0, 13);
        assert_eq!(
            parts.wanted(0, 0, true).map(|(w, _)| w.offset),
            Some(10),
            "more finished above"
        );
        parts.finish(0, 0, 10);
        parts.finish(0, 0, 11);
        let (w, _) = parts.wanted(0, 0, true).unwrap();
        assert_eq!((w.offset, w.metadata.as_deref()), (14, None));
        assert!(parts.wanted(0, 0, false).is_none(), "14 asked for already");
        parts.finish(0, 0, 14);
        let (w, _) = parts.wanted(0, 0, false).unwrap();
        assert_eq!((w.offset, w.metadata), (15, None));
        assert!(parts.wanted(0, 1, false).is_none());
        assert!(!parts.idle(0, 0), "asked for already");
        let _ = take(&mut parts, 15);
        parts.finish(0, 0, 15);
        assert!(parts.idle(0, 0));
        let _ = take(&mut parts, 16);
        assert!(!parts.idle(0, 0), "16 has not finished");
        assert!(!parts.idle(0, 1), "not assigned");
    }

    #[test]
    fn an_inherited_set_is_skipped_when_read_and_dropped_when_reading_starts_below_it() {
        let mut parts = assigned();
        let epoch = parts.epoch(0, 0).unwrap();
        let mut set = Finished::default();
        set.push(12);
        set.push(14);
        parts.inherit(0, 0, set.clone(), 10);
        assert!(parts.inherits(0, 0));
        for o in [10, 11] {
            assert!(matches!(take(&mut parts, o), Read::Take { done_before: false, .. }));
        }
        assert!(matches!(take(&mut parts, 12), Read::Take { done_before: true, .. }));
        // What it lists above what was read goes into the metadata.
        parts.finish(0, 0, 11);
        let (w, _) = parts.wanted(0, 0, true).unwrap();
        let listed = finished::decode(w.metadata.unwrap().as_bytes(), w.offset).unwrap();
        assert_eq!((w.offset, listed.ranges()), (10, &[(11, 13), (14, 15)][..]));
        parts.inherit(0, 1, set.clone(), 10);
        assert!(!parts.inherits(0, 1), "not assigned");

        let mut parts = assigned();
        parts.inherit(0, 0, set.clone(), 10);
        assert_eq!(
            take(&mut parts, 3),
            Read::Take {
                epoch,
                first: true,
                stale: Some(10),
                done_before: false,
            }
        );
        assert!(!parts.inherits(0, 0));
        for o in 4..=12 {
            assert!(matches!(take(&mut parts, o), Read::Take { done_before: false, .. }));
        }
    }

    #[test]
    fn a_restart_is_a_new_epoch_that_drops_what_was_inherited() {
        let mut parts = assigned();
        let old = parts.epoch(0, 0).unwrap();
        let mut set = Finished::default();
        set.push(12);
        parts.inherit(0, 0, set, 10);
        assert_eq!(
            parts.restart(0, 0),
            Some(Restarted {
                old_epoch: old,
                inherited_base: Some(10),
            })
        );
        assert!(!parts.inherits(0, 0) && parts.epoch(0, 0) > Some(old));
        let again = parts.restart(0, 0).unwrap();
        assert_eq!(again.inherited_base, None);
        assert_eq!(parts.restart(0, 5), None, "not assigned: assigned now");
        assert!(parts.epoch(0, 5).is_some());
    }

    #[test]
    fn a_partition_moved_back_takes_nothing_past_where_it_reads_again() {
        let mut parts = assigned();
        for o in 10..=12 {
            let _ = take(&mut parts, o);
        }
        parts.finish(0, 0, 10);
        assert_eq!(take(&mut parts, 12), Read::Back { reread_from: Some(11) });
        parts.restart(0, 0);
        parts.resume_at(0, 0, 11);
        assert_eq!(take(&mut parts, 12), Read::Reread(11));
        assert!(matches!(take(&mut parts, 11), Read::Take { first: true, .. }));
        assert!(matches!(take(&mut parts, 12), Read::Take { first: false, .. }));
        // Nothing unfinished below: this record is taken in the new epoch.
        let mut parts = assigned();
        let _ = take(&mut parts, 10);
        parts.finish(0, 0, 10);
        assert_eq!(take(&mut parts, 10), Read::Back { reread_from: None });
        parts.restart(0, 0);
        assert_eq!(parts.read_again(0, 0, 10, 3), parts.epoch(0, 0));
        assert_eq!(parts.read_again(0, 9, 10, 3), None);
        assert_eq!(parts.wanted(0, 0, false).map(|(w, _)| w.leader_epoch), None);
        parts.finish(0, 0, 10);
        assert_eq!(parts.wanted(0, 0, false).map(|(w, _)| w.leader_epoch), Some(3));
    }

    #[test]
    fn an_unreadable_batch_is_routed_searched_and_passed() {
        let mut parts = assigned();
        let _ = take(&mut parts, 4);
        assert_eq!(parts.unreadable(0, 0, 3), BatchStep::Ignore, "already passed");
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Route { from: 5, stale: None });
        let probe = parts.search_end(0, 0, 5, 5, Some(100));
        assert!(probe > 5);
        // Reported again at its first offset: the probe is still inside.
        match parts.unreadable(0, 0, 5) {
            BatchStep::Seek(next) => assert!(next > probe),
            other => panic!("{other:?}"),
        }
        // A record read past the probe: past the batch, or the search goes
        // back below it.
        match take(&mut parts, 99) {
            Read::Seek(next) => assert!(next < 99),
            Read::Take { .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(parts.unreadable(0, 1, 5), BatchStep::Ignore, "not assigned");

        // Stopped there: reports of it are ignored.
        let mut parts = assigned();
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Route { from: 5, stale: None });
        parts.stop_unreadable(0, 0, 5, 5);
        assert!(parts.holds_back(0, 0, 5) && parts.read_window(0, 0).is_none());
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Ignore);
        parts.drain_stopped_unreadable();

        // Listed as finished before by the committed metadata: passed one
        // offset at a time, as far as it lists them.
        let mut parts = assigned();
        let mut set = Finished::default();
        set.push_range(5, 7);
        parts.inherit(0, 0, set, 5);
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::PassListed { to: 6, stale: None });
        parts.pass_listed(0, 0, 5, 6);
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::PassListed { to: 7, stale: None });
        parts.pass_listed(0, 0, 5, 7);
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Route { from: 7, stale: None });
        // Once routed, the probe is gone until the search starts.
        parts.stop_unreadable(0, 0, 5, 7);
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Ignore);

        // Read below the inherited set's base: dropped, and said.
        let mut parts = assigned();
        let mut set = Finished::default();
        set.push(12);
        parts.inherit(0, 0, set, 10);
        assert_eq!(
            parts.unreadable(0, 0, 3),
            BatchStep::Route {
                from: 3,
                stale: Some(10)
            }
        );
    }

    /// The search for an unreadable batch's end, step by step: a record
    /// read at the probe is past the batch (the search halves back when
    /// the batch may end below it), another unreadable batch met during the
    /// search is past the first, and a report of an older batch changes
    /// nothing.
    #[test]
    fn an_unreadable_batchs_search_step_by_step() {
        let mut parts = assigned();
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Route { from: 5, stale: None });
        assert_eq!(parts.search_end(0, 0, 5, 5, Some(100)), 6);
        // 6 is inside the batch: the step doubles.
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Seek(8));
        // A report of an older batch: nothing changes.
        assert_eq!(parts.unreadable(0, 0, 3), BatchStep::Ignore);
        // The record at 8 is past the batch, which may end at 7: not taken.
        assert_eq!(take(&mut parts, 8), Read::Seek(7));
        // 7 follows the batch: taken, and the search is over.
        assert!(matches!(take(&mut parts, 7), Read::Take { .. }));
        assert!(matches!(take(&mut parts, 8), Read::Take { .. }));

        // Another unreadable batch at the probe: past the first.
        let mut parts = assigned();
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Route { from: 5, stale: None });
        parts.search_end(0, 0, 5, 5, Some(100));
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Seek(8));
        assert_eq!(parts.unreadable(0, 0, 8), BatchStep::Seek(7));
        // At 7 the batch at 5 is still there: the batch at 8 follows it.
        assert_eq!(parts.unreadable(0, 0, 5), BatchStep::Seek(8));
        assert_eq!(parts.unreadable(0, 0, 8), BatchStep::Route { from: 8, stale: None });
    }

    /// A partition's own queue, on librdkafka's mock cluster: a partition
    /// whose queue holds records is not idle; its handle is taken back
    /// once; a partition stopped at an unreadable batch has its queue
    /// emptied, and only such a partition.
    #[test]
    fn partition_queues_on_the_mock_cluster() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        use std::time::{Duration, Instant};

        let cluster = crate::EmbeddedCluster::start(1).expect("a mock cluster");
        cluster.create_topic("q", 2).expect("a topic");
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("a producer");
        for p in [0, 1] {
            for key in ["a", "b", "c"] {
                let record = BaseRecord::<str, str>::to("q").partition(p).payload("x").key(key);
                producer.send(record).map_err(|(e, _)| e).expect("queued");
            }
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");
        let consumer: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("group.id", "g")
                .set("auto.offset.reset", "earliest")
                .create()
                .expect("a consumer"),
        );
        let mut parts = Partitions::default();
        let t = parts.topic("q");
        for p in [0, 1] {
            parts.assign(t, p, super::super::ffi::split(&consumer, "q", p));
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_range("q", 0, 1);
        consumer.assign(&tpl).expect("assigned");
        let len = |parts: &Partitions, p: i32| parts.get(t, p).and_then(|ps| ps.queue.as_ref()).map_or(0, |q| q.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        while len(&parts, 0) < 3 || len(&parts, 1) < 3 {
            assert!(
                Instant::now() < deadline,
                "the records never reached the partition queues"
            );
            let _ = consumer.poll(Duration::from_millis(50));
        }
        // Partition 0 read and finished its first record, two more wait.
        assert!(matches!(parts.read(t, 0, 0, 0), Read::Take { .. }));
        parts.finish(t, 0, 0);
        assert!(!parts.idle(t, 0), "records wait in its queue");
        // Partition 0 stopped at an unreadable batch, partition 1 searching
        // for one's end: only partition 0's queue is emptied.
        parts.stop_unreadable(t, 0, 1, 1);
        assert_eq!(parts.unreadable(t, 1, 0), BatchStep::Route { from: 0, stale: None });
        parts.search_end(t, 1, 0, 0, Some(3));
        parts.drain_stopped_unreadable();
        assert_eq!(len(&parts, 0), 0, "the stopped partition's queue is emptied");
        assert!(len(&parts, 1) >= 3, "the other's is not");
        assert!(parts.take_queue(t, 1).is_some());
        assert!(parts.take_queue(t, 1).is_none(), "taken once");
    }

    /// The same position committed again (with other metadata) is no
    /// progress: a partition whose commits stall is not hidden by it.
    #[test]
    fn a_commit_of_the_same_position_is_no_progress() {
        let mut parts = assigned();
        let epoch = parts.epoch(0, 0).unwrap();
        let key = parts.key(0, 0);
        parts.committed(&key, epoch, 3);
        if let Some(ps) = parts.get_mut(0, 0) {
            ps.progress_ms = 0;
        }
        parts.committed(&key, epoch, 3);
        assert_eq!(parts.progress(0, 0).map(|(at, _)| at), Some(0));
        parts.committed(&key, epoch, 4);
        assert!(parts.progress(0, 0).is_some_and(|(at, _)| at > 0));
        assert!(format!("{parts:?}").contains("PartitionState { epoch: 1"), "{parts:?}");
    }
}

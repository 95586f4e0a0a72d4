//! The consumer: one poll thread per subscriber owns the rdkafka consumer and
//! the engine state (which partitions are assigned, which messages wait for a
//! handler slot, which run, which have finished). It polls, queues, starts
//! handlers in arrival order up to `concurrency`, applies completions, asks
//! the committer to commit, and serves rebalance callbacks (which librdkafka
//! runs inside `poll`, on this thread, so waiting in them blocks no async
//! worker).
//!
//! Ordering: fetched messages go into the [`Schedule`], which releases a
//! message only when its key (or partition) has nothing else ready or
//! running, per the subscriber's ordering mode.
//!
//! Backpressure: each assigned partition's messages are split into their own
//! librdkafka queue when it is assigned. The loop reads a partition's queue
//! only while fewer than `max_buffered` messages wait for a slot, and (in
//! `key` and `partition` ordering) while the partition's messages waiting
//! behind busy lanes stay below its share of `max_buffered`; a partition over
//! its share is paused (not read) until they drain, so it cannot fill the
//! buffer and stall the others. An unread partition stays in librdkafka's
//! bounded prefetch buffer, which stops fetching it when full. The consumer's own queue, which carries rebalances
//! and errors, is polled on every turn whatever the backlog, so the member
//! never exceeds `max.poll.interval.ms` because handlers are slow. (Pausing
//! would do the same but purges the prefetched messages, and every resume
//! then waits up to `fetch.wait.max.ms` for a refetch.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::commit::{Assigned, CommitRequest, Committer};
use crate::dispatch::{Dispatcher, Shared};
use crate::event::{Event, PartitionKey, PartitionSlot};
use crate::hash::SmallKeyMap;
use crate::message::Message;
use crate::native::{self, PartitionQueue, Polled};
use crate::offsets::OffsetTracker;
use crate::policy::OnError;
use crate::schedule::Schedule;
use crate::stats::Stats;
use crate::subscriber::Subscriber;
use crate::watch::ClusterWatch;
use crate::Error;

/// Above this much prefetch over all assigned partitions, an assignment
/// warns (1 GiB).
const PREFETCH_WARNING_KB: u64 = 1 << 20;
/// How long the poll thread sleeps when nothing happens (it is woken earlier
/// by a completion or by librdkafka when the queue becomes non-empty).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Events or messages polled from the consumer's own queue in one turn.
const POLL_BATCH: usize = 1024;
/// Messages read from one partition's queue before the next partition's turn.
const PARTITION_BATCH: usize = 64;
/// Messages read from partition queues in one turn of the poll loop, at
/// most, before it polls the consumer again for rebalances and errors.
const TURN_READS: usize = 4096;
/// Messages one `fill` reads at most: handlers that end on their first
/// poll free their slots as fast as it reads, so without a bound it would
/// read the whole backlog before the loop commits or serves a rebalance.
const FILL_READS: usize = 256;

/// The rdkafka context of a kconc consumer: routes librdkafka's logs into
/// `tracing` and runs the engine's rebalance handling.
pub(crate) struct KconcContext {
    subscriber: Arc<str>,
    engine: Mutex<Option<Engine>>,
    /// The app's view of the cluster, which its librdkafka lines go to.
    watch: Arc<ClusterWatch>,
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

impl std::fmt::Debug for KconcContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KconcContext")
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}

impl KconcContext {
    /// The context of a consumer of subscriber `subscriber`, with no engine yet.
    pub(crate) fn new(subscriber: Arc<str>, watch: Arc<ClusterWatch>) -> Self {
        Self {
            subscriber,
            engine: Mutex::new(None),
            watch,
        }
    }

    fn engine(&self) -> MutexGuard<'_, Option<Engine>> {
        // Only the poll thread takes this lock; a poisoned lock means a bug
        // panicked while holding it, and its state is still the best we have.
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientContext for KconcContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.watch.log(level, &self.subscriber, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.client_error(&self.subscriber, &error, reason);
    }
}

impl ConsumerContext for KconcContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if let Some(engine) = self.engine().as_mut() {
                    // User code never runs inside the callback: what starts
                    // meanwhile goes to the workers.
                    engine.in_callback = true;
                    engine.revoke(consumer, tpl);
                    engine.in_callback = false;
                }
            }
            // Before librdkafka assigns and starts fetching, so that no
            // message of these partitions reaches the consumer's own queue.
            Rebalance::Assign(tpl) => {
                self.watch.reachable();
                if let Some(engine) = self.engine().as_mut() {
                    engine.dispatcher.stats().joined.store(true, Ordering::Relaxed);
                    engine.assign(tpl);
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(subscriber = &*self.subscriber, error = %e, "rebalance error");
            }
        }
    }
}

/// The settings the engine reads on every message, copied out of [`Subscriber`].
#[derive(Debug)]
struct Settings {
    name: Arc<str>,
    group: String,
    /// Handlers running at once, at most.
    concurrency: usize,
    /// Messages read and not started (retries included), at most
    /// (reading stops there).
    max_buffered: usize,
    /// Offsets of one partition read past its last committed one, at most.
    max_uncommitted: usize,
    /// librdkafka's prefetch bound per assigned partition
    /// (`queued.max.messages.kbytes`), for a warning.
    prefetch_kb: u64,
    commit_batch_size: usize,
    commit_interval: Duration,
    shutdown_timeout: Duration,
    revoke_timeout: Duration,
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
    /// This partition's own message queue (see the module docs).
    queue: Option<PartitionQueue>,
    /// The last position handed to the committer.
    requested: Option<i64>,
    /// Not read because its messages waiting behind busy lanes reached its
    /// share of `max_buffered`.
    paused: bool,
    /// Stopped by the error policy at this offset: never read again in this
    /// assignment, and nothing at or after it starts; what comes before it
    /// still runs (and is retried) in its lane's order, and is committed.
    stopped: Option<i64>,
    /// Being revoked: nothing of it starts or is retried any more.
    revoking: bool,
    /// The position the committer last committed in this assignment.
    committed: Option<i64>,
    /// When `committed` last moved (or the partition was assigned), in
    /// Unix milliseconds: how long its commits have stalled.
    progress_ms: u64,
    /// A record batch librdkafka cannot read, at this first offset: the
    /// position the partition is being moved past, if it is (`probe`).
    unreadable: Option<Unreadable>,
}

impl PartitionState {
    /// Stops the partition at `offset` (or keeps an earlier stop).
    fn stop_at(&mut self, offset: i64) {
        self.stopped = Some(self.stopped.map_or(offset, |s| s.min(offset)));
    }

    /// Whether a stop holds the message at `offset` back.
    fn holds_back(&self, offset: i64) -> bool {
        self.stopped.is_some_and(|s| offset >= s)
    }
}

/// Why backpressure holds a partition back (it is not read meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Its messages waiting behind busy lanes reached its share of
    /// `max_buffered` (key and partition ordering).
    Share,
    /// Its uncommitted window reached `max_uncommitted`.
    Window,
}

impl Held {
    fn reason(self) -> &'static str {
        match self {
            Self::Share => "its buffer share is full",
            Self::Window => "its uncommitted window is full (max_uncommitted): it waits for its commits",
        }
    }
}

/// An unreadable record batch of a partition (see [`Engine::unreadable`]).
#[derive(Clone, Copy, Debug)]
struct Unreadable {
    /// The batch's first offset, as librdkafka reports it.
    at: i64,
    /// Where the fetch was last moved to, to find the end of the batch:
    /// `None` once the partition is stopped there.
    probe: Option<i64>,
}

/// A failed message waiting for its retry.
struct Delayed {
    due: Instant,
    seq: u64,
    slot: PartitionSlot,
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

/// Everything the poll thread knows. Lives in the consumer's context so the
/// rebalance callbacks reach it; only the poll thread ever locks it.
struct Engine {
    settings: Settings,
    topics: Vec<TopicState>,
    events: Receiver<Event>,
    dispatcher: Dispatcher,
    committer: Committer,
    /// The consumer, to split partition queues off it (weak: the consumer
    /// owns this engine through its context).
    consumer: Weak<BaseConsumer<KconcContext>>,
    /// Wakes the poll loop when a partition queue gets messages.
    wake: mpsc::Sender<Event>,
    /// Assigned partitions in the order their queues are read; the start
    /// rotates so that no partition is always served first.
    order: Vec<(usize, i32)>,
    next_turn: usize,
    next_epoch: u64,
    /// Messages fetched and not started, in the order they may start.
    waiting: Schedule,
    /// Failed messages waiting for their retry, soonest first. They hold
    /// no handler slot; their offsets stay unfinished and, in key or
    /// partition ordering, their lanes stay busy.
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    /// Handlers running now, all partitions.
    running: usize,
    finished_since_commit: usize,
    last_commit: Instant,
    /// Shutdown has begun: nothing more is dispatched.
    closing: bool,
    /// This subscriber's shutdown signal: once it is given, nothing more
    /// starts, even before the poll loop notices.
    shutdown: CancellationToken,
    /// Inside a rebalance callback: handlers started now go to the workers
    /// whatever the `FirstPoll` mode.
    in_callback: bool,
    /// When the shutdown under way must be over: a revoke during it ends
    /// by then too.
    shutdown_deadline: Option<Instant>,
    /// When the high watermarks were last read, in Unix milliseconds.
    last_watermarks: u64,
}

impl Engine {
    fn topic_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.topics.iter().position(|t| &*t.name == name) {
            return i;
        }
        self.topics.push(TopicState {
            name: Arc::from(name),
            partitions: SmallKeyMap::default(),
        });
        self.topics.len() - 1
    }

    fn new_partition(&mut self) -> PartitionState {
        self.next_epoch += 1;
        PartitionState {
            epoch: self.next_epoch,
            offsets: OffsetTracker::default(),
            running: 0,
            queue: None,
            requested: None,
            paused: false,
            stopped: None,
            revoking: false,
            committed: None,
            progress_ms: crate::stats::unix_ms(),
            unreadable: None,
        }
    }

    fn assign(&mut self, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        let consumer = self.consumer.upgrade();
        for el in tpl.elements() {
            let t = self.topic_index(el.topic());
            let mut state = self.new_partition();
            if let Some(consumer) = &consumer {
                state.queue = native::split(consumer, el.topic(), el.partition()).map(|mut q| {
                    let wake = self.wake.clone();
                    q.set_nonempty_callback(move || {
                        let _ = wake.send(Event::Wake);
                    });
                    q
                });
            }
            if state.queue.is_none() {
                tracing::warn!(
                    subscriber = &*self.settings.name,
                    topic = el.topic(),
                    partition = el.partition(),
                    "could not split the partition's queue; its messages come through the consumer queue"
                );
            }
            // Assigned again without a revoke in between (eager protocol):
            // what waited under the old assignment is read again from the
            // committed offset.
            let p = el.partition();
            self.forget_unstarted(t, p);
            self.topics[t].partitions.insert(p, state);
            self.dispatcher.stats().set_assigned(el.topic(), p, true);
        }
        self.rebuild_order();
        let prefetch_kb = self.order.len() as u64 * self.settings.prefetch_kb;
        if prefetch_kb > PREFETCH_WARNING_KB {
            tracing::warn!(
                subscriber = &*self.settings.name,
                partitions = self.order.len(),
                prefetch_mb = prefetch_kb / 1024,
                "librdkafka may prefetch up to queued.max.messages.kbytes per assigned partition: this much in all; \
                 lower queued.max.messages.kbytes if memory is short"
            );
        }
        self.dispatcher.stats().assignments.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            subscriber = &*self.settings.name,
            group = self.settings.group,
            partitions = %describe(tpl),
            "partitions assigned"
        );
    }

    /// Publishes what health and metrics read: the time of this turn, the
    /// buffered count and, once a second, the partitions' high watermarks
    /// (librdkafka's cached values: no request to the broker).
    fn observe(&mut self, consumer: &BaseConsumer<KconcContext>) {
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
            if let Some(high) = native::cached_high_watermark(consumer, topic, p) {
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

    fn rebuild_order(&mut self) {
        self.order = self.all_partitions();
        self.order.sort_unstable();
    }

    /// Stops dispatching the revoked partitions, waits (bounded) for their
    /// in-flight handlers, commits their finished prefix synchronously and
    /// drops their state, all within `revoke_timeout`. Other partitions
    /// keep running meanwhile. A lost assignment (the group has moved on
    /// without this member) is dropped at once, without a wait or a commit.
    fn revoke(&mut self, consumer: &BaseConsumer<KconcContext>, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        let started = Instant::now();
        // Within a shutdown, a revoke ends when the shutdown must.
        let mut deadline = started + self.settings.revoke_timeout;
        if let Some(shutdown) = self.shutdown_deadline {
            deadline = deadline.min(shutdown);
        }
        self.dispatcher.stats().revocations.fetch_add(1, Ordering::Relaxed);
        let mut revoked = Vec::new();
        for el in tpl.elements() {
            if let Some(t) = self.topics.iter().position(|t| &*t.name == el.topic()) {
                if let Some(ps) = self.topics[t].partitions.get_mut(&el.partition()) {
                    ps.revoking = true;
                    revoked.push((t, el.partition()));
                }
            }
        }
        // Messages of the revoked partitions that have not started never will
        // here: the new owner reads them again from the committed offset.
        for &(t, p) in &revoked {
            self.forget_unstarted(t, p);
        }
        let lost = consumer.assignment_lost();
        if lost {
            // Not ready again until the member has rejoined its group.
            self.dispatcher.stats().joined.store(false, Ordering::Relaxed);
        } else {
            // Handlers may take the time the commit of their finished
            // prefix does not need.
            let handlers_until = deadline
                .checked_sub(commit_allowance(self.settings.revoke_timeout))
                .unwrap_or(started);
            while self.in_flight(&revoked) > 0 {
                // The partitions that stay keep starting handlers meanwhile
                // (on the workers: this is a rebalance callback).
                self.start_ready();
                let left = handlers_until.saturating_duration_since(Instant::now());
                if left.is_zero() || !self.wait_event(left) {
                    tracing::warn!(
                        subscriber = &*self.settings.name,
                        still_running = self.in_flight(&revoked),
                        "revoke timeout: committing what finished; the rest will be redelivered to the new owner"
                    );
                    break;
                }
            }
        }
        let positions = self.positions(&revoked);
        let assigned: Vec<Assigned> = revoked
            .iter()
            .filter_map(|&(t, p)| Some((self.key(t, p), self.topics[t].partitions.get(&p)?.epoch)))
            .collect();
        let result = if lost {
            self.committer.request(CommitRequest::Forget(assigned));
            Ok(())
        } else {
            self.committer.request(CommitRequest::Positions(positions));
            self.committer.flush(assigned, deadline)
        };
        for &(t, p) in &revoked {
            self.dispatcher.stats().set_assigned(&self.topics[t].name, p, false);
            self.dispatcher.stats().forget_partition(&self.topics[t].name, p);
            if let Some(ps) = self.topics[t].partitions.remove(&p) {
                if ps.paused {
                    self.dispatcher.stats().set_paused(&self.topics[t].name, p, false);
                }
                if ps.stopped.is_some() {
                    self.dispatcher.stats().set_stopped(&self.topics[t].name, p, None);
                }
            }
        }
        self.rebuild_order();
        match result {
            Ok(()) if lost => tracing::warn!(
                subscriber = &*self.settings.name,
                group = self.settings.group,
                partitions = %describe(tpl),
                "partitions lost; their uncommitted messages will be redelivered to the new owner"
            ),
            Ok(()) => tracing::info!(
                subscriber = &*self.settings.name,
                group = self.settings.group,
                partitions = %describe(tpl),
                took_ms = started.elapsed().as_millis() as u64,
                "partitions revoked; finished prefix committed"
            ),
            Err(e) => {
                self.dispatcher
                    .stats()
                    .revoke_commit_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subscriber = &*self.settings.name,
                    group = self.settings.group,
                    partitions = %describe(tpl),
                    error = %e,
                    "partitions revoked; the commit of their finished prefix failed (or did not finish in time and was dropped), so the new owner may redeliver some"
                );
            }
        }
    }

    /// Forgets a partition's messages that have not started: fetched ones
    /// and retries (revoke, stop, or a new assignment of it). They are read
    /// again from the committed offset by whoever owns it next.
    fn forget_unstarted(&mut self, t: usize, p: i32) {
        self.forget_unstarted_from(t, p, i64::MIN);
    }

    /// Forgets what of a partition has not started at `from` or after (a
    /// stop there): its earlier messages still run in their lanes' order.
    fn forget_unstarted_from(&mut self, t: usize, p: i32, from: i64) {
        self.waiting.drop_partition(t, p, from);
        self.delayed
            .retain(|Reverse(d)| !(d.slot.topic == t && d.slot.partition == p && d.msg.offset() >= from));
    }

    /// Moves retries that are due to the front of the schedule.
    fn release_due(&mut self) {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(d)) = self.delayed.pop() else { break };
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
    fn idle_wait(&self) -> Duration {
        self.delayed.peek().map_or(IDLE_WAIT, |Reverse(d)| {
            d.due.saturating_duration_since(Instant::now()).min(IDLE_WAIT)
        })
    }

    fn key(&self, t: usize, partition: i32) -> PartitionKey {
        PartitionKey {
            topic: self.topics[t].name.clone(),
            partition,
        }
    }

    fn in_flight(&self, parts: &[(usize, i32)]) -> usize {
        parts
            .iter()
            .filter_map(|&(t, p)| self.topics[t].partitions.get(&p))
            .map(|p| p.running)
            .sum()
    }

    /// Positions that moved since they were last handed to the committer.
    fn positions(&mut self, parts: &[(usize, i32)]) -> Vec<(PartitionKey, u64, i64)> {
        let mut out = Vec::new();
        for &(t, p) in parts {
            let name = self.topics[t].name.clone();
            if let Some(ps) = self.topics[t].partitions.get_mut(&p) {
                if let Some(pos) = ps.offsets.committable() {
                    if ps.requested.is_none_or(|r| pos > r) {
                        ps.requested = Some(pos);
                        out.push((
                            PartitionKey {
                                topic: name,
                                partition: p,
                            },
                            ps.epoch,
                            pos,
                        ));
                    }
                }
            }
        }
        out
    }

    fn all_partitions(&self) -> Vec<(usize, i32)> {
        self.topics
            .iter()
            .enumerate()
            .flat_map(|(t, ts)| ts.partitions.keys().map(move |&p| (t, p)))
            .collect()
    }

    /// Queues a message that came through the consumer's own queue (a
    /// partition whose queue could not be split).
    fn dispatch(&mut self, msg: &BorrowedMessage<'_>) {
        if self.closing {
            return;
        }
        let t = self.topic_index(msg.topic());
        if !self.topics[t].partitions.contains_key(&msg.partition()) {
            // Not assigned here (any more): nothing of it is tracked or
            // committed, so the message is simply not taken.
            tracing::debug!(
                subscriber = &*self.settings.name,
                topic = msg.topic(),
                partition = msg.partition(),
                "a message of a partition not assigned here; not taken"
            );
            return;
        }
        let msg = Message::detach(self.topics[t].name.clone(), msg);
        self.enqueue(t, msg);
    }

    fn enqueue(&mut self, t: usize, msg: Message) {
        self.dispatcher.stats().received.fetch_add(1, Ordering::Relaxed);
        let Some(ps) = self.topics[t].partitions.get_mut(&msg.partition()) else {
            return;
        };
        // A record past an unreadable batch: the partition is past it.
        if ps
            .unreadable
            .is_some_and(|u| u.probe.is_some_and(|probe| msg.offset() >= probe))
        {
            ps.unreadable = None;
        }
        let mut first = ps.offsets.is_untouched();
        let mut epoch = ps.epoch;
        if !ps.offsets.dispatched(msg.offset()) {
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
            (first, epoch) = (true, ps.epoch);
        }
        let slot = PartitionSlot {
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
        self.waiting.push(slot, msg);
        self.dispatcher
            .stats()
            .max_waiting
            .fetch_max(self.buffered() as u64, Ordering::Relaxed);
    }

    /// Starts a partition's tracking afresh (a new epoch) on its queue: what
    /// waited under the old one is forgotten, its running handlers' ends
    /// count for nothing (their lanes are freed as they end).
    fn restart_partition(&mut self, t: usize, p: i32) {
        self.forget_unstarted(t, p);
        let mut state = self.new_partition();
        if let Some(old) = self.topics[t].partitions.get_mut(&p) {
            state.queue = old.queue.take();
            state.paused = old.paused;
        }
        self.topics[t].partitions.insert(p, state);
    }

    /// Messages read and not started: waiting for a slot or their lane,
    /// or for their retry. What `max_buffered` bounds.
    fn buffered(&self) -> usize {
        self.waiting.len() + self.delayed.len()
    }

    /// Why partition `ps` (`p` of topic `t`) is not read now, if it is not.
    fn held_back(&self, t: usize, p: i32, ps: &PartitionState, share: usize) -> Option<Held> {
        if self.waiting.blocked(t, p) >= share {
            return Some(Held::Share);
        }
        (ps.offsets.window(ps.committed) >= self.settings.max_uncommitted as u64).then_some(Held::Window)
    }

    /// Reads partition queues, a batch from each in turn, while fewer than
    /// `max_buffered` messages wait (retries included) and the partition is
    /// not held back (see [`Engine::held_back`]), up to `FILL_READS`
    /// messages. Returns how many it read.
    fn fill(&mut self) -> usize {
        if self.closing || self.order.is_empty() {
            return 0;
        }
        let n = self.order.len();
        let share = (self.settings.max_buffered / n).max(1);
        for i in 0..n {
            let (t, p) = self.order[i];
            let held = self.topics[t]
                .partitions
                .get(&p)
                .and_then(|ps| self.held_back(t, p, ps, share));
            self.set_paused(t, p, held);
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
                        Polled::Message(msg) => {
                            self.enqueue(t, msg);
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
    fn on_partition_error(&mut self, t: usize, p: i32, code: RDKafkaErrorCode, offset: Option<i64>, reason: &str) {
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
    /// is moved past the batch, one offset at a time (a fetch anywhere in the
    /// batch returns the whole batch, and its end is not reported), so no
    /// readable record after it is passed over.
    fn unreadable(&mut self, t: usize, p: i32, at: i64, code: RDKafkaErrorCode, reason: &str) {
        let topic = self.topics[t].name.clone();
        let Some(ps) = self.topics[t].partitions.get_mut(&p) else {
            return;
        };
        if ps.stopped.is_some() {
            // Reported again while the partition stands stopped there.
            return;
        }
        if let Some(u) = ps.unreadable.filter(|u| u.at == at) {
            // The fetch moved to `probe` is still inside the batch: one further.
            if let Some(probe) = u.probe {
                self.seek_past(t, p, at, probe + 1);
            }
            return;
        }
        if ps.offsets.last_dispatched().is_some_and(|last| at <= last) {
            // A report of what is already passed: nothing new.
            return;
        }
        ps.offsets.dispatched(at);
        let slot = PartitionSlot {
            topic: t,
            partition: p,
            epoch: ps.epoch,
            lane: None,
        };
        self.dispatcher.stats().unreadable.fetch_add(1, Ordering::Relaxed);
        let error = format!("record batch at offset {at} cannot be read ({code:?}): {reason}");
        let on_error = self.dispatcher.on_error().clone();
        tracing::error!(
            subscriber = &*self.settings.name,
            topic = &*topic,
            partition = p,
            offset = at,
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
                ps.stop_at(at);
                ps.unreadable = Some(Unreadable { at, probe: None });
                let stats = self.dispatcher.stats();
                stats.stopped.fetch_add(1, Ordering::Relaxed);
                stats.set_stopped(&topic, p, Some((at, error)));
                self.forget_unstarted_from(t, p, at);
            }
            OnError::Skip => {
                ps.offsets.finished(at);
                self.finished_since_commit += 1;
                self.seek_past(t, p, at, at + 1);
            }
            OnError::DeadLetter(_) => {
                ps.running += 1;
                self.running += 1;
                self.dispatcher.dead_letter(slot, Message::new(&topic, p, at), error);
                self.dispatcher.flush();
                self.seek_past(t, p, at, at + 1);
            }
        }
    }

    /// Moves the fetch of partition `p` (past an unreadable batch at `at`)
    /// to `to`.
    fn seek_past(&mut self, t: usize, p: i32, at: i64, to: i64) {
        let topic = self.topics[t].name.clone();
        if let Some(ps) = self.topics[t].partitions.get_mut(&p) {
            ps.unreadable = Some(Unreadable { at, probe: Some(to) });
        }
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
    fn set_paused(&mut self, t: usize, p: i32, held: Option<Held>) {
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

    /// Starts waiting messages, oldest first, while slots are free.
    fn start_ready(&mut self) {
        self.release_due();
        self.start_waiting();
        if !self.dispatcher.flush() && !self.shutdown.is_cancelled() {
            // The runtime the handlers run on is gone: nothing can run any
            // more, so this subscriber stops (what was handed over stays
            // uncommitted) instead of reading on.
            tracing::error!(
                subscriber = &*self.settings.name,
                "the tokio runtime the handlers run on has shut down; stopping this subscriber"
            );
            self.shutdown.cancel();
        }
    }

    /// Starts waiting messages while slots are free; what goes to workers
    /// waits for the next flush.
    fn start_waiting(&mut self) {
        if self.closing || self.shutdown.is_cancelled() {
            return;
        }
        while self.running < self.settings.concurrency {
            let Some((slot, msg)) = self.waiting.pop() else {
                break;
            };
            if let Some(ps) = self.topics[slot.topic].partitions.get_mut(&slot.partition) {
                ps.running += 1;
            }
            self.running += 1;
            if let Some(ended) = self.dispatcher.start(slot, msg, !self.in_callback) {
                // Ended on its first poll, here: its lane and slot are free
                // for the next message at once.
                self.on_event(ended);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let (slot, offset) = match ev {
            Event::Wake => return,
            Event::Committed(positions) => {
                self.on_committed(positions);
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
        self.running = self.running.saturating_sub(1);
        let Some(ts) = self.topics.get_mut(slot.topic) else {
            return;
        };
        let Some(ps) = ts
            .partitions
            .get_mut(&slot.partition)
            .filter(|ps| ps.epoch == slot.epoch)
        else {
            // A handler of an assignment that is gone (revoked, or since
            // assigned again): its outcome counts for nothing here, but the
            // lane it held is free now, so the key's messages of the new
            // assignment may start.
            self.waiting.finished(slot, offset);
            return;
        };
        ps.running = ps.running.saturating_sub(1);
        match ev {
            Event::Done(c) => {
                ps.offsets.finished(c.offset);
                self.finished_since_commit += 1;
                self.waiting.finished(c.slot, c.offset);
            }
            Event::Retry { slot, msg, due } => {
                // A revoked partition's message is not tried again here: it
                // stays uncommitted and goes to the new owner.
                if !ps.holds_back(msg.offset()) && !ps.revoking && !self.closing {
                    // It keeps its lane, idle, until its retry starts.
                    self.waiting.idle(slot, msg.offset());
                    self.delayed_seq += 1;
                    self.delayed.push(Reverse(Delayed {
                        due,
                        seq: self.delayed_seq,
                        slot,
                        msg,
                    }));
                } else {
                    self.waiting.finished(slot, msg.offset());
                }
            }
            Event::Stopped { slot, offset, reason } => {
                ps.stop_at(offset);
                let topic = ts.name.clone();
                self.waiting.finished(slot, offset);
                self.forget_unstarted_from(slot.topic, slot.partition, offset);
                self.dispatcher
                    .stats()
                    .set_stopped(&topic, slot.partition, Some((offset, reason)));
            }
            Event::Abandoned(slot, offset) => self.waiting.finished(slot, offset),
            Event::Batch(_) | Event::Committed(_) | Event::Wake => {}
        }
    }

    /// Records what the committer has committed, where it is still this
    /// assignment's.
    fn on_committed(&mut self, positions: Vec<(PartitionKey, u64, i64)>) {
        for (key, epoch, offset) in positions {
            let Some(ts) = self.topics.iter_mut().find(|t| t.name == key.topic) else {
                continue;
            };
            if let Some(ps) = ts.partitions.get_mut(&key.partition).filter(|ps| ps.epoch == epoch) {
                if ps.committed.is_none_or(|c| offset > c) {
                    ps.committed = Some(offset);
                    ps.progress_ms = crate::stats::unix_ms();
                }
            }
        }
    }

    /// Applies every event already queued; returns how many there were.
    fn drain_events(&mut self) -> usize {
        let mut n = 0;
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
            n += 1;
        }
        n
    }

    /// Waits up to `timeout` for one event, then drains the rest.
    /// Returns `false` on timeout.
    fn wait_event(&mut self, timeout: Duration) -> bool {
        match self.events.recv_timeout(timeout) {
            Ok(ev) => {
                self.on_event(ev);
                self.drain_events();
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    fn maybe_commit(&mut self, force: bool) {
        let due = self.finished_since_commit >= self.settings.commit_batch_size
            || (self.finished_since_commit > 0 && self.last_commit.elapsed() >= self.settings.commit_interval);
        if !(due || force) {
            return;
        }
        let parts = self.all_partitions();
        let positions = self.positions(&parts);
        self.finished_since_commit = 0;
        self.last_commit = Instant::now();
        if !positions.is_empty() {
            self.committer.request(CommitRequest::Positions(positions));
        }
    }
}

/// How much of `revoke_timeout` a revoke keeps for the commit of the
/// revoked partitions' finished prefix: the handlers get the rest.
fn commit_allowance(revoke_timeout: Duration) -> Duration {
    (revoke_timeout / 4).min(Duration::from_secs(1))
}

fn describe(tpl: &TopicPartitionList) -> String {
    let mut parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect();
    parts.sort();
    parts.join(",")
}

/// A running subscriber's poll thread.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) name: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) done: tokio::sync::oneshot::Receiver<()>,
}

/// Creates the consumer, subscribes, and starts the poll thread.
pub(crate) fn start(
    sub: &Subscriber,
    config: ClientConfig,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    watch: Arc<ClusterWatch>,
) -> Result<Runner, Error> {
    let name: Arc<str> = Arc::from(sub.name.as_str());
    let handler_context = crate::context::Context::new(name.clone(), &sub.group, shutdown.clone(), &config);
    let context = KconcContext::new(name.clone(), watch);
    let mut consumer: BaseConsumer<KconcContext> = config
        .create_with_context(context)
        .map_err(|e| Error::from_client_creation(&sub.name, e))?;
    let (events_tx, events_rx) = mpsc::channel();
    let wake = events_tx.clone();
    consumer.set_nonempty_callback(move || {
        let _ = wake.send(Event::Wake);
    });
    let topics: Vec<&str> = sub.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| Error::Kafka {
        subscriber: sub.name.clone(),
        source,
    })?;
    let consumer = Arc::new(consumer);
    let stats = Arc::new(Stats::default());
    let committer = Committer::spawn(
        &sub.name,
        sub.group.clone(),
        consumer.clone(),
        stats.clone(),
        events_tx.clone(),
    )
    .map_err(|e| Error::Thread(sub.name.clone(), e))?;
    let wake = events_tx.clone();
    let engine = Engine {
        settings: Settings {
            name: name.clone(),
            group: sub.group.clone(),
            concurrency: sub.concurrency,
            max_buffered: sub.effective_max_buffered(),
            max_uncommitted: sub.max_uncommitted,
            prefetch_kb: config
                .get("queued.max.messages.kbytes")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(8192),
            commit_batch_size: sub.commit_batch_size,
            commit_interval: sub.commit_interval,
            shutdown_timeout: sub.shutdown_timeout,
            revoke_timeout: sub.revoke_timeout,
        },
        topics: Vec::new(),
        events: events_rx,
        dispatcher: Dispatcher::new(
            Shared {
                subscriber: name.clone(),
                handler: sub.handler.clone(),
                context: handler_context,
                events: events_tx,
                stats: stats.clone(),
                runtime: runtime.clone(),
                policy: sub.policy.clone(),
                handler_timeout: sub.handler_timeout,
                abort: tokio_util::sync::CancellationToken::new(),
            },
            sub.concurrency,
            sub.first_poll,
        ),
        committer,
        consumer: Arc::downgrade(&consumer),
        wake,
        order: Vec::new(),
        next_turn: 0,
        next_epoch: 0,
        waiting: Schedule::new(sub.ordering),
        delayed: BinaryHeap::new(),
        delayed_seq: 0,
        running: 0,
        finished_since_commit: 0,
        last_commit: Instant::now(),
        last_watermarks: 0,
        closing: false,
        shutdown: shutdown.clone(),
        in_callback: false,
        shutdown_deadline: None,
    };
    *consumer.context().engine() = Some(engine);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let poll_stats = stats.clone();
    std::thread::Builder::new()
        .name(format!("kconc-poll-{}", sub.name))
        .spawn(move || {
            // Handlers' first polls may run here (see `Dispatcher`): they
            // find the runtime's timers and spawner as on a worker.
            let _runtime = runtime.enter();
            let _alive = poll_stats.alive_while(|s| &s.poll_alive);
            let deadline = poll_loop(&consumer, &shutdown);
            close(consumer, deadline);
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::Thread(sub.name.clone(), e))?;
    tracing::info!(subscriber = &*name, group = sub.group, topics = ?sub.topics, concurrency = sub.concurrency, "subscriber started");
    Ok(Runner {
        name: sub.name.clone(),
        stats,
        done,
    })
}

fn with_engine<R>(consumer: &BaseConsumer<KconcContext>, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    consumer.context().engine().as_mut().map(f)
}

/// Runs until shutdown, then drains; returns the shutdown's deadline.
fn poll_loop(consumer: &BaseConsumer<KconcContext>, shutdown: &CancellationToken) -> Instant {
    while !shutdown.is_cancelled() {
        // Rebalances and errors (and the messages of any unsplit partition):
        // served on every turn, however far behind the handlers are.
        let mut polled = 0;
        for _ in 0..POLL_BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(msg)) => {
                    consumer.context().watch.reachable();
                    with_engine(consumer, |e| e.dispatch(&msg));
                    polled += 1;
                }
                Some(Err(e)) => {
                    let cx = consumer.context();
                    cx.watch.consumer_error(&cx.subscriber, &e);
                }
                None => break,
            }
        }
        with_engine(consumer, |e| {
            let mut events = e.drain_events();
            loop {
                e.start_ready();
                let read = e.fill();
                e.start_ready();
                polled += read;
                if read == 0 {
                    break;
                }
                consumer.context().watch.reachable();
                events += e.drain_events();
                // Handlers that end on their first poll free their slots at
                // once, so reading could go on for as long as the backlog
                // lasts: commit as it goes, and go back to serving
                // rebalances after a turn's worth.
                e.maybe_commit(false);
                if polled >= TURN_READS {
                    break;
                }
            }
            e.maybe_commit(false);
            e.observe(consumer);
            if polled == 0 && events == 0 {
                let wait = e.idle_wait();
                e.wait_event(wait);
                e.start_ready();
                e.maybe_commit(false);
            }
        });
    }
    drain_on_shutdown(consumer)
}

/// How much of `shutdown_timeout` a shutdown keeps for the final commit:
/// in-flight handlers get the rest.
fn final_commit_allowance(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 4).min(Duration::from_secs(5))
}

/// Stops fetching, waits for in-flight handlers (polling meanwhile so
/// rebalances are still served), drops those still running, and commits,
/// all within `shutdown_timeout`; returns that deadline.
fn drain_on_shutdown(consumer: &BaseConsumer<KconcContext>) -> Instant {
    let started = Instant::now();
    let Some((deadline, handlers_until)) = with_engine(consumer, |e| {
        e.closing = true;
        e.dispatcher.stats().closing.store(true, Ordering::Relaxed);
        // Messages that have not started are read again after a restart.
        e.waiting.clear();
        e.delayed.clear();
        let deadline = started + e.settings.shutdown_timeout;
        e.shutdown_deadline = Some(deadline);
        (deadline, deadline - final_commit_allowance(e.settings.shutdown_timeout))
    }) else {
        return started;
    };
    let mut abandoned = 0;
    loop {
        let still = with_engine(consumer, |e| {
            e.drain_events();
            let left = handlers_until.saturating_duration_since(Instant::now());
            if e.running > 0 && !left.is_zero() {
                e.wait_event(left.min(IDLE_WAIT));
            }
            e.running
        })
        .unwrap_or(0);
        if still == 0 {
            break;
        }
        if Instant::now() >= handlers_until {
            tracing::warn!(
                subscriber = &*consumer.context().subscriber,
                still_running = still,
                "shutdown timeout: dropping the handlers still running and committing what finished; \
                 unfinished messages will be redelivered"
            );
            with_engine(consumer, |e| e.dispatcher.abort());
            abandoned = still;
            break;
        }
        // Serve rebalance callbacks; a message polled now is not dispatched.
        let _ = consumer.poll(Duration::ZERO);
    }
    final_commit(consumer, started, deadline, abandoned);
    deadline
}

/// Commits every finished prefix, retrying (and polling in between, so a
/// rebalance in progress can complete and give the member its new
/// generation) until it succeeds or `deadline` passes.
/// `abandoned` handlers were dropped at the shutdown timeout.
fn final_commit(consumer: &BaseConsumer<KconcContext>, started: Instant, deadline: Instant, abandoned: usize) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(result) = with_engine(consumer, |e| {
            e.maybe_commit(true);
            e.committer.flush(Vec::new(), deadline)
        }) else {
            return;
        };
        let name = consumer.context().subscriber.clone();
        match result {
            Ok(()) if abandoned == 0 => {
                tracing::info!(
                    subscriber = &*name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "shutdown: in-flight handlers drained and offsets committed"
                );
                return;
            }
            Ok(()) => {
                tracing::warn!(
                    subscriber = &*name,
                    abandoned,
                    took_ms = started.elapsed().as_millis() as u64,
                    "shutdown: {abandoned} handler(s) abandoned at the shutdown timeout (their messages will be \
                     redelivered); what finished is committed"
                );
                return;
            }
            Err(err) if Instant::now() + backoff >= deadline => {
                tracing::warn!(
                    subscriber = &*name,
                    error = %err,
                    "shutdown: final commit failed; uncommitted messages will be redelivered"
                );
                return;
            }
            Err(err) => {
                tracing::debug!(subscriber = &*name, error = %err, "shutdown: final commit failed; retrying");
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    let _ = consumer.poll(until.saturating_duration_since(Instant::now()));
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Takes the engine out of the context (which stops the committer and breaks
/// the consumer -> context -> committer -> consumer cycle), then drops the
/// consumer, which leaves the group.
fn close(consumer: Arc<BaseConsumer<KconcContext>>, deadline: Instant) {
    let engine = consumer.context().engine().take();
    let name = consumer.context().subscriber.clone();
    if let Some(engine) = engine {
        if !engine.committer.stop(deadline) {
            // A commit that does not return (a coordinator that never
            // answers): the committer is left to end alone, and with it
            // its share of the consumer; the program does not wait for it.
            tracing::warn!(
                subscriber = &*name,
                "shutdown: a commit is still in progress at the shutdown timeout; not waiting for it"
            );
        }
    }
    let started = Instant::now();
    let refs = Arc::strong_count(&consumer);
    drop(consumer);
    tracing::debug!(
        subscriber = &*name,
        refs,
        took_ms = started.elapsed().as_millis() as u64,
        "consumer closed"
    );
}

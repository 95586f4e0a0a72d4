//! The engine: what happens to a message between the broker and the
//! commit. One poll thread per subscriber owns the consumer and all the
//! state below; workers run the handlers and report back by channel; one
//! committer thread writes the offsets. The files, in the order a message
//! flows through them:
//!
//! - `poll`: the poll thread's loop, and starting a subscriber.
//! - `fetch`: reading each partition's queue under backpressure.
//! - `schedule`: the lanes that keep key or partition order.
//! - `dispatch`: starting a message on a worker (or its first poll here).
//! - `inline`: the opt-in first polls on the poll thread.
//! - `worker` and `places`: the worker tasks, and the reused places their futures run in.
//! - `complete`: a handler's outcome under the error policy.
//! - `event`: what workers and the committer report, and what the poll
//!   loop does with it.
//! - `offsets`: each partition's contiguous finished prefix.
//! - `finished`: the finished offsets above it, as commit metadata.
//! - `commit`: the committer thread.
//! - `rebalance`: assignments, revokes and each partition's epoch.
//! - `retry`: failed messages waiting for their backoff.
//! - `batch_end`: finding where a record batch librdkafka cannot read ends.
//! - `shutdown`: drain, final commit, close.
//! - `ffi`: the librdkafka calls rdkafka does not wrap (the only `unsafe`).
//! - `hash`: a cheap hasher for the engine's small keys.
//!
//! The engine's state lives in `Mutex<Option<Engine>>` inside the
//! consumer's context, because librdkafka runs the rebalance callbacks
//! inside `poll`: only the poll thread takes that lock, and it never calls
//! `poll` while holding it (that would deadlock).
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
//! bounded prefetch buffer, which stops fetching it when full. The
//! consumer's own queue, which carries rebalances and errors, is polled on
//! every turn whatever the backlog, so the member never exceeds
//! `max.poll.interval.ms` because handlers are slow. (Pausing
//! would do the same but purges the prefetched messages, and every resume
//! then waits up to `fetch.wait.max.ms` for a refetch.)

mod batch_end;
mod commit;
mod complete;
mod dispatch;
mod event;
mod fetch;
mod ffi;
mod finished;
mod hash;
mod inline;
mod offsets;
mod places;
mod poll;
mod rebalance;
mod retry;
mod schedule;
mod shutdown;
mod worker;

pub use complete::HandlerTimedOut;
pub(crate) use ffi::{committed_metadata, mock_request_errors, no_initial_rebalance_delay};
pub(crate) use finished::{encode_offsets as encode_finished, finished_count};
pub(crate) use poll::{start, Runner};

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio_util::sync::CancellationToken;

use self::commit::Committer;
use self::dispatch::Dispatcher;
use self::event::Event;
use self::ffi::PartitionQueue;
use self::finished::Finished;
use self::hash::SmallKeyMap;
use self::offsets::{LeaderEpochs, OffsetTracker};
use self::rebalance::ClientHooks;
use self::retry::Retries;
use self::schedule::Schedule;

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
/// Idle commits are asked for at most this often (each request covers every
/// partition idle by then), or every tenth of `commit_interval` if that is
/// shorter: at a low rate, where each record comes in a fetch of its own
/// (as Kafka's long poll answers), every message would otherwise make its
/// own OffsetCommit.
const IDLE_COMMIT_GAP: Duration = Duration::from_millis(100);
/// Messages one `fill` reads at most: handlers that end on their first
/// poll free their slots as fast as it reads, so without a bound it would
/// read the whole backlog before the loop commits or serves a rebalance.
const FILL_READS: usize = 256;

impl std::fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState")
            .field("epoch", &self.epoch)
            .field("running", &self.running)
            .field("split", &self.queue.is_some())
            .finish_non_exhaustive()
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
    /// Commit the finished offsets above each position in its metadata,
    /// and skip what the committed metadata says finished.
    commit_metadata: bool,
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

    /// Called with the first offset this assignment reads: a read that
    /// starts below the committed offset the inherited set came with means
    /// the log is not the one the set was written for (truncated, or
    /// deleted and created again, and the fetch reset to its start), so
    /// the set is dropped. Returns whether it was.
    fn start_reading(&mut self, first: i64) -> bool {
        if self.inherited.is_empty() || first >= self.inherited_base {
            return false;
        }
        self.inherited = Finished::default();
        true
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
    /// The search for the batch's end; `None` while the committed metadata
    /// lists every offset of the batch before `probe` as finished before
    /// (they are moved past without the policy, one at a time: each must be
    /// listed), or once the partition is stopped there.
    search: Option<batch_end::BatchEnd>,
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
    consumer: Weak<BaseConsumer<ClientHooks>>,
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
    delayed: Retries,
    /// Handlers running now, all partitions.
    running: usize,
    finished_since_commit: usize,
    last_commit: Instant,
    /// When idle partitions were last asked to be committed.
    last_idle_commit: Option<Instant>,
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

fn with_engine<R>(consumer: &BaseConsumer<ClientHooks>, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    consumer.context().engine().as_mut().map(f)
}

/// What the engine's unit tests share.
#[cfg(test)]
mod test_util {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc::{self, Receiver};
    use std::sync::{Arc, Weak};
    use std::task::Wake;

    use super::commit::{CommitRequest, Committer};
    use super::complete::HandlerEnv;
    use super::Engine;
    use crate::subscriber::Subscriber;

    /// An engine with no consumer (its broker calls do nothing), its
    /// handlers on a runtime of its own, and a committer whose requests
    /// come out of `commits`.
    pub(super) struct TestEngine {
        pub(super) engine: Engine,
        pub(super) commits: Receiver<CommitRequest>,
        _runtime: tokio::runtime::Runtime,
    }

    impl TestEngine {
        pub(super) fn new(sub: &Subscriber) -> Self {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            let name: Arc<str> = Arc::from(sub.name.as_str());
            let shutdown = tokio_util::sync::CancellationToken::new();
            let context = crate::context::Context::new(
                name.clone(),
                &sub.group,
                shutdown.clone(),
                &rdkafka::ClientConfig::new(),
                sub.states.clone(),
                sub.reply.as_deref(),
            );
            let (events_tx, events) = mpsc::channel();
            let env = HandlerEnv {
                subscriber: name,
                handler: sub.handler.clone(),
                context,
                events: events_tx.clone(),
                stats: Arc::default(),
                runtime: runtime.handle().clone(),
                policy: sub.policy.clone(),
                handler_timeout: sub.handler_timeout,
                abort: tokio_util::sync::CancellationToken::new(),
            };
            let (committer, commits) = Committer::for_test();
            let engine = Engine::new(sub, 8192, env, committer, Weak::new(), (events, events_tx), shutdown);
            Self {
                engine,
                commits,
                _runtime: runtime,
            }
        }

        /// Assigns partitions `0..n` of `topic`.
        pub(super) fn assign(&mut self, topic: &str, n: i32) {
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_range(topic, 0, n - 1);
            self.engine.assign(&tpl);
        }

        /// What the committer was asked since the last call.
        pub(super) fn requests(&self) -> Vec<CommitRequest> {
            self.commits.try_iter().collect()
        }
    }

    /// A waker that counts its wakes.
    pub(super) struct Count(pub(super) AtomicU64);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

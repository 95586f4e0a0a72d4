//! The engine: what happens to a message between the broker and the
//! commit. One poll thread per subscriber owns the consumer and all the
//! state below; workers run the handlers and report back by channel; one
//! committer thread writes the offsets. The files, in the order a message
//! flows through them:
//!
//! - `poll`: the poll thread's loop, and starting a subscriber.
//! - `fetch`: reading each partition's queue under backpressure; `intake`
//!   decides whose turn it is and which are held back.
//! - `partitions`: each assigned partition's state, and its changes.
//! - `schedule`: the lanes that keep key or partition order.
//! - `dispatch`: starting a message on a worker (or its first poll here).
//! - `inline`: the opt-in first polls on the poll thread.
//! - `worker` and `places`: the worker tasks, and the reused places their futures run in.
//! - `batches`: a batch handler's call on a worker, and its messages' outcomes.
//! - `complete`: a handler's outcome under the error policy.
//! - `event`: what workers and the committer report, and what the poll
//!   loop does with it.
//! - `offsets`: each partition's contiguous finished prefix.
//! - `commit_plan`: when and what to commit.
//! - `finished`: the finished offsets above it, as commit metadata.
//! - `commit`: the committer thread.
//! - `rebalance`: assignments, revokes and each partition's epoch.
//! - `retry`: failed messages waiting for their backoff.
//! - `batch_end`: finding where a record batch librdkafka cannot read ends.
//! - `shutdown`: drain, final commit, close.
//! - `ffi`: the librdkafka calls rdkafka does not wrap (the only `unsafe`).
//! - `hash`: a cheap hasher for the engine's small keys.
//! - `spares`: vectors handed back across threads for reuse.
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
mod batches;
mod commit;
mod commit_plan;
mod complete;
mod dispatch;
mod event;
mod fetch;
mod ffi;
mod finished;
mod hash;
mod inline;
mod intake;
#[cfg(test)]
mod model;
mod offsets;
mod partitions;
mod places;
mod poll;
mod protocol_probe;
mod rebalance;
mod retry;
mod schedule;
mod shutdown;
mod spares;
mod worker;

pub use complete::HandlerTimedOut;
pub(crate) use ffi::{
    committed_metadata, mock_consumer_group_timing, mock_request_errors, mock_without_api, no_initial_rebalance_delay,
    Held,
};
pub(crate) use finished::{encode_offsets as encode_finished, finished_count};
pub(crate) use poll::{start, Runner};

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio_util::sync::CancellationToken;

use self::commit::Committer;
use self::commit_plan::CommitPlan;
use self::dispatch::Dispatcher;
use self::event::Event;
use self::intake::Intake;
use self::partitions::Partitions;
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
/// Messages one `fill` reads at most: handlers that end on their first
/// poll free their slots as fast as it reads, so without a bound it would
/// read the whole backlog before the loop commits or serves a rebalance.
const FILL_READS: usize = 256;

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
    shutdown_timeout: Duration,
    revoke_timeout: Duration,
    /// Records wait for their handlers as librdkafka's, not copied (see
    /// `ffi::Held`): only where each waits in read order, and begins on a
    /// worker.
    hold: bool,
    /// For a batch handler: the most messages, and bytes of keys and
    /// payloads, in one call, and how long a partition's messages may
    /// wait to fill one.
    batch: Option<BatchLimits>,
}

/// A batch handler's `max_batch`, `max_batch_bytes` and `batch_wait`.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    max: usize,
    max_bytes: usize,
    wait: Duration,
}

/// Everything the poll thread knows. Lives in the consumer's context so the
/// rebalance callbacks reach it; only the poll thread ever locks it.
struct Engine {
    settings: Settings,
    /// Every assigned partition's state, and the handlers running.
    parts: Partitions,
    /// Which partition's queue is read next, and which are held back.
    intake: Intake,
    /// When and what to commit.
    plan: CommitPlan,
    events: Receiver<Event>,
    dispatcher: Dispatcher,
    committer: Committer,
    /// The consumer, to split partition queues off it (weak: the consumer
    /// owns this engine through its context).
    consumer: Weak<BaseConsumer<ClientHooks>>,
    /// Wakes the poll loop when a partition queue gets messages.
    wake: mpsc::Sender<Event>,
    /// Messages fetched and not started, in the order they may start.
    waiting: Schedule,
    /// Failed messages waiting for their retry, soonest first. They hold
    /// no handler slot; their offsets stay unfinished and, in key or
    /// partition ordering, their lanes stay busy.
    delayed: Retries,
    /// Batches running now (for a batch handler, what `concurrency`
    /// bounds; each of their messages counts as running in `parts`).
    batches: usize,
    /// Under `batch_wait`: each partition whose read messages wait to fill
    /// a batch, since when the first of them waits and how many there are.
    filling: std::collections::HashMap<(usize, i32), (Instant, usize)>,
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
                sub.settings.reply.as_deref(),
            );
            let (events_tx, events) = mpsc::channel();
            let env = HandlerEnv {
                telemetry: crate::telemetry::Telemetry::new(name.clone(), context.group_name()),
                subscriber: name,
                handler: sub.handler.clone(),
                store: None,
                context,
                events: events_tx.clone(),
                stats: Arc::default(),
                runtime: runtime.handle().clone(),
                policy: sub.settings.policy(),
                handler_timeout: sub.settings.handler_timeout,
                abort: tokio_util::sync::CancellationToken::new(),
                admission: super::worker::Admission::default(),
                spare_starts: super::spares::Spares::default(),
                spare_events: super::spares::Spares::default(),
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

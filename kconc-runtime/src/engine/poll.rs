//! The poll loop: one thread per subscriber owns the consumer and the
//! engine. Each turn it serves the consumer's own queue (rebalances and
//! errors), reads partition queues under backpressure (`fetch`), starts what
//! the schedule releases, applies the workers' events, and asks the
//! committer to commit.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::commit::{CommitRequest, Committer};
use super::commit_plan::CommitPlan;
use super::complete::HandlerEnv;
use super::dispatch::Dispatcher;
use super::event::{Event, MessageTag};
use super::intake::Intake;
use super::partitions::Partitions;
use super::rebalance::ClientHooks;
use super::retry::Retries;
use super::schedule::Schedule;
use super::shutdown::{close, drain_on_shutdown};
use super::{with_engine, BatchLimits, Engine, Settings, IDLE_WAIT, POLL_BATCH, TURN_READS};
use crate::error::Error;
use crate::stats::Stats;
use crate::subscriber::Subscriber;
use crate::watch::ClusterWatch;

/// How a subscriber's poll thread ended: `Ok` after a shutdown (or with
/// its runtime gone), `Err` with why it stopped on its own.
pub(crate) type Ended = Result<(), String>;

/// A running subscriber's poll thread.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) name: String,
    pub(crate) stats: Arc<Stats>,
    /// Told how the poll thread ended; dropped unsent only if the thread
    /// could not even say so.
    pub(crate) done: tokio::sync::oneshot::Receiver<Ended>,
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
    let handler_context = crate::context::Context::new(
        name.clone(),
        &sub.group,
        shutdown.clone(),
        &config,
        sub.states.clone(),
        sub.settings.reply.as_deref(),
    )
    .watched_by(watch.clone());
    // A subscriber that produces (replies, dead letters) creates its
    // producer now, so its first message does not wait for the idempotent
    // producer's start (its producer id, a broker connection). An error
    // here is reported where the producer is used, as before.
    if sub.settings.reply.is_some() || sub.settings.on_error.dead_letter_topic().is_some() {
        let _ = handler_context.producer();
    }
    let stats = Arc::new(Stats::default());
    // `store = "sql"`: each call in a transaction of the app's database.
    let store = match &sub.sql {
        Some(spec) => Some(
            (spec.open)(
                &sub.states,
                crate::sql::Opening {
                    group: Arc::from(sub.group.as_str()),
                    subscriber: name.clone(),
                    stats: stats.clone(),
                    shutdown: shutdown.clone(),
                    runtime: runtime.clone(),
                    concurrency: sub.settings.concurrency,
                },
            )
            .map_err(|e| Error::Config(format!("subscriber `{}`: {e}", sub.name)))?,
        ),
        None => None,
    };
    let handler = match &store {
        Some(store) => sub.handler.clone().in_store(store.clone()),
        None => sub.handler.clone(),
    };
    let context = ClientHooks::new(name.clone(), watch, stats.clone());
    let mut consumer: BaseConsumer<ClientHooks> = config
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
    let committer = Committer::spawn(
        &sub.name,
        sub.group.clone(),
        consumer.clone(),
        stats.clone(),
        events_tx.clone(),
    )
    .map_err(|e| Error::Thread(sub.name.clone(), e))?;
    // A shutdown wakes the poll loop at once, not after its idle wait.
    let on_shutdown = events_tx.clone();
    let token = shutdown.clone();
    runtime.spawn(async move {
        token.cancelled().await;
        let _ = on_shutdown.send(Event::Wake);
    });
    let wake = events_tx.clone();
    let prefetch_kb = config
        .get("queued.max.messages.kbytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(8192);
    let env = HandlerEnv {
        telemetry: crate::telemetry::Telemetry::new(name.clone(), handler_context.group_name()),
        subscriber: name.clone(),
        handler,
        store,
        context: handler_context,
        events: events_tx,
        stats: stats.clone(),
        runtime: runtime.clone(),
        policy: sub.settings.policy(),
        handler_timeout: sub.settings.handler_timeout,
        abort: tokio_util::sync::CancellationToken::new(),
        admission: super::worker::Admission::default(),
        spare_starts: super::spares::Spares::default(),
        spare_events: super::spares::Spares::default(),
    };
    let engine = Engine::new(
        sub,
        prefetch_kb,
        env,
        committer,
        Arc::downgrade(&consumer),
        (events_rx, wake),
        shutdown.clone(),
    );
    *consumer.context().engine() = Some(engine);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let poll_stats = stats.clone();
    let thread_name = name.clone();
    let alive = poll_stats.alive_while(|s| &s.poll_alive);
    std::thread::Builder::new()
        .name(format!("kconc-poll-{}", sub.name))
        .spawn(move || {
            // Handlers' first polls may run here (see `Dispatcher`): they
            // find the runtime's timers and spawner as on a worker.
            let _runtime = runtime.enter();
            let _alive = alive;
            // Why it stopped on its own is recorded as soon as it is known:
            // health says it while the consumer closes (its committer ends
            // first, and would be all health could see).
            let record = |why: &String| {
                tracing::error!(subscriber = &*thread_name, "subscriber stopped: {why}");
                if let Ok(mut failed) = poll_stats.stopped_because.lock() {
                    failed.get_or_insert_with(|| why.clone());
                }
            };
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (deadline, ended) = poll_loop(&consumer, &shutdown);
                if let Err(why) = &ended {
                    record(why);
                }
                close(consumer, deadline);
                ended
            }))
            .unwrap_or_else(|panic| {
                let why = format!("its poll thread panicked: {}", crate::handler::panic_text(&*panic));
                record(&why);
                Err(why)
            });
            let _ = done_tx.send(ended);
        })
        .map_err(|e| Error::Thread(sub.name.clone(), e))?;
    if sub.settings.group_protocol == crate::GroupProtocol::Consumer {
        probe_group_protocol(&sub.name, &config, stats.clone());
    }
    tracing::info!(subscriber = &*name, group = sub.group, topics = ?sub.topics, concurrency = sub.settings.concurrency, "subscriber started");
    Ok(Runner {
        name: sub.name.clone(),
        stats,
        done,
    })
}

/// Asks, on a thread of its own, whether the brokers of `config` speak the
/// consumer group protocol; if they do not, the subscriber stops (its poll
/// loop sees `must_stop`) with a reason that says what to do. One that
/// cannot be asked leaves the subscriber as it is.
fn probe_group_protocol(name: &str, config: &ClientConfig, stats: Arc<Stats>) {
    let (config, subscriber) = (config.clone(), name.to_owned());
    let probe = move || match super::protocol_probe::lacks_consumer_protocol(&config, Duration::from_secs(10)) {
        Some(true) => {
            let bootstrap = config.get("bootstrap.servers").unwrap_or_default();
            let _ = stats
                .must_stop
                .set(super::protocol_probe::unsupported_reason(bootstrap));
        }
        Some(false) => tracing::debug!(subscriber, "the brokers support the consumer group protocol"),
        None => tracing::debug!(
            subscriber,
            "could not ask the brokers whether they support the consumer group protocol"
        ),
    };
    if let Err(e) = std::thread::Builder::new()
        .name(format!("kconc-probe-{name}"))
        .spawn(probe)
    {
        tracing::debug!(subscriber = name, error = %e, "could not start the group protocol probe");
    }
}

/// Runs until shutdown, then drains; returns the shutdown's deadline. A
/// consumer that can go on no more (see [`failure`]) ends it at once,
/// with why.
pub(super) fn poll_loop(consumer: &BaseConsumer<ClientHooks>, shutdown: &CancellationToken) -> (Instant, Ended) {
    while !shutdown.is_cancelled() {
        if let Some(why) = failure(consumer) {
            with_engine(consumer, |e| e.fail());
            // Only forgetting is left to the committer.
            return (Instant::now() + Duration::from_secs(1), Err(why));
        }
        // Rebalances and errors: served on every turn, however far behind
        // the handlers are.
        let mut polled = 0;
        for _ in 0..POLL_BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(msg)) => {
                    // Every assigned partition's messages come through its
                    // own queue (or, where it could not be split, it is
                    // stopped: see `Engine::unsplit`); one here belongs to
                    // neither, and is not taken.
                    consumer.context().watch.reachable();
                    tracing::debug!(
                        subscriber = &*consumer.context().subscriber,
                        topic = rdkafka::Message::topic(&msg),
                        partition = rdkafka::Message::partition(&msg),
                        "a message of a partition not read here; not taken"
                    );
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
            e.commit_idle();
            e.observe(consumer);
            if polled == 0 && events == 0 {
                let wait = e.idle_wait();
                e.wait_event(wait);
                e.start_ready();
                e.maybe_commit(false);
                e.commit_idle();
            }
        });
    }
    (drain_on_shutdown(consumer), Ok(()))
}

/// Why the consumer can go on no more, if it cannot: librdkafka raised a
/// fatal error (a static member fenced by another with the same instance
/// id; under `group.protocol=consumer` also an unreleased instance id, a
/// full group, a denied group). librdkafka then drops the assignment
/// without a rebalance callback and never rejoins. Or its brokers lack its
/// group protocol (see `protocol_probe`). Or the committer thread has
/// ended (nothing would be committed any more).
fn failure(consumer: &BaseConsumer<ClientHooks>) -> Option<String> {
    if let Some((code, reason)) = consumer.client().fatal_error() {
        return Some(format!(
            "fatal consumer error: {reason} ({code:?}); librdkafka has dropped its partitions and will not rejoin the group"
        ));
    }
    let cx = consumer.context();
    let (must_stop, committer_gone) = with_engine(consumer, |e| {
        let stats = e.dispatcher.stats();
        (
            stats.must_stop.get().cloned(),
            !stats.committer_alive.load(Ordering::Relaxed),
        )
    })
    .unwrap_or((None, false));
    must_stop
        .or_else(|| committer_gone.then(|| format!("its committer thread (kconc-commit-{}) has ended", cx.subscriber)))
}

/// Whether `sub`'s records wait for their handlers as librdkafka's, not
/// copied (see `ffi::Held`). A held record pins the fetch response it came
/// in, so only while each record waits in read order, as in librdkafka's
/// own queue: for a slot, first in, first out. One that would wait behind
/// a busy key or partition is copied as it enters its lane (see
/// `Schedule::push`). Not for a batch handler (its batches gather
/// records) nor where first polls may run on the poll thread (one there
/// keeps a copy in case kconc's own code panics around it).
fn holds_records(sub: &Subscriber) -> bool {
    sub.settings.first_poll == crate::FirstPoll::Worker && !sub.handler.is_batch()
}

impl Engine {
    /// The engine of subscriber `sub`, its handlers running in `env`, with
    /// librdkafka's prefetch bound per partition (`prefetch_kb`), its
    /// committer, its consumer, and the channel its events come on (with a
    /// sender for the partition queues' wake-ups).
    pub(super) fn new(
        sub: &Subscriber,
        prefetch_kb: u64,
        env: HandlerEnv,
        committer: Committer,
        consumer: Weak<BaseConsumer<ClientHooks>>,
        (events, wake): (mpsc::Receiver<Event>, mpsc::Sender<Event>),
        shutdown: CancellationToken,
    ) -> Self {
        Engine {
            settings: Settings {
                name: env.subscriber.clone(),
                group: sub.group.clone(),
                concurrency: sub.settings.concurrency,
                max_buffered: sub.settings.max_buffered(sub.handler.is_batch()),
                max_uncommitted: sub.settings.max_uncommitted,
                prefetch_kb,
                shutdown_timeout: sub.settings.shutdown_timeout,
                revoke_timeout: sub.settings.revoke_timeout,
                hold: holds_records(sub),
                batch: sub.handler.is_batch().then_some(BatchLimits {
                    max: sub.settings.max_batch,
                    max_bytes: sub.settings.max_batch_bytes,
                    wait: sub.settings.batch_wait,
                }),
            },
            parts: Partitions::default(),
            intake: Intake::default(),
            plan: CommitPlan::new(
                sub.settings.commit_batch_size,
                sub.settings.commit_interval,
                sub.settings.commit_metadata == crate::CommitMetadata::Finished,
            )
            .with_spares(committer.spares()),
            events,
            dispatcher: Dispatcher::new(env, sub.settings.concurrency, sub.settings.first_poll),
            committer,
            consumer,
            wake,
            waiting: Schedule::new(sub.settings.ordering),
            delayed: Retries::default(),
            batches: 0,
            filling: std::collections::HashMap::new(),
            closing: false,
            shutdown,
            in_callback: false,
            shutdown_deadline: None,
        }
    }

    /// The consumer can go on no more (see [`failure`]): nothing more
    /// starts, the handlers still running are dropped, every partition's
    /// state is dropped, and nothing more is committed (the member is out of
    /// its group: its partitions go to others, who read them from the last
    /// commit).
    pub(super) fn fail(&mut self) {
        self.closing = true;
        self.shutdown.cancel();
        self.waiting.clear();
        self.delayed.clear();
        self.dispatcher.abort();
        let parts = self.parts.all();
        self.committer
            .request(CommitRequest::Forget(self.parts.assigned(&parts)));
        for (t, p) in parts {
            self.drop_partition(t, p);
        }
        self.intake.rebuild(self.parts.all());
        self.dispatcher.stats().joined.store(false, Ordering::Relaxed);
    }

    /// Starts waiting messages, oldest first, while slots are free.
    pub(super) fn start_ready(&mut self) {
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

    /// Moves retries that are due to the front of the schedule, where their
    /// partition is still theirs and may run them.
    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some((slot, msg)) = self.delayed.pop_due(now) {
            if self.parts.may_retry(slot, msg.offset()) && !self.closing {
                self.waiting.retry(slot, msg);
            }
        }
    }

    /// How long the loop may sleep: until the next retry is due, or the
    /// next batch has waited `batch_wait`, at most `IDLE_WAIT`.
    pub(super) fn idle_wait(&self) -> Duration {
        let wait = self.settings.batch.map_or(Duration::ZERO, |b| b.wait);
        let filled = self.filling.values().map(|&(since, _)| since + wait).min();
        match self.delayed.next_due().into_iter().chain(filled).min() {
            Some(due) => due.saturating_duration_since(Instant::now()).min(IDLE_WAIT),
            None => IDLE_WAIT,
        }
    }

    /// Under `batch_wait`: a message of partition `p` of topic `t` was read
    /// to wait for a batch.
    pub(super) fn filling(&mut self, t: usize, p: i32) {
        if self.settings.batch.is_some_and(|b| !b.wait.is_zero()) {
            self.filling.entry((t, p)).or_insert_with(|| (Instant::now(), 0)).1 += 1;
        }
    }

    /// Under `batch_wait`: `n` of partition `p`'s waiting messages started
    /// as a batch at `now`; what is left of them waits from now.
    fn started_filling(&mut self, t: usize, p: i32, n: usize, now: Instant) {
        if let Some((since, left)) = self.filling.get_mut(&(t, p)) {
            *left = left.saturating_sub(n);
            *since = now;
            if *left == 0 {
                self.filling.remove(&(t, p));
            }
        }
    }

    /// Starts waiting messages while slots are free; what goes to workers
    /// waits for the next flush.
    pub(super) fn start_waiting(&mut self) {
        if self.closing || self.shutdown.is_cancelled() {
            return;
        }
        if let Some(limits) = self.settings.batch {
            let now = Instant::now();
            while self.has_slot() {
                // Under `batch_wait`, a partition with fewer than a batch
                // read waits until its first message has waited that long.
                let filling = &self.filling;
                let held = |tag: &MessageTag| {
                    filling
                        .get(&(tag.topic, tag.partition))
                        .is_some_and(|&(since, n)| n < limits.max && now < since + limits.wait)
                };
                let Some(batch) = self.waiting.pop_batch(limits.max, limits.max_bytes, held) else {
                    break;
                };
                if let Some((slot, _)) = batch.first() {
                    self.started_filling(slot.topic, slot.partition, batch.len(), now);
                }
                for (slot, _) in &batch {
                    self.parts.started(*slot);
                }
                self.batches += 1;
                let stats = self.dispatcher.stats();
                stats.batches_in_flight.store(self.batches as u64, Ordering::Relaxed);
                self.dispatcher.start_batch(batch);
            }
            return;
        }
        while self.has_slot() {
            let Some((slot, msg)) = self.waiting.pop() else {
                break;
            };
            self.parts.started(slot);
            if let Some(ended) = self.dispatcher.start(slot, msg, !self.in_callback) {
                // Ended on its first poll, here: its lane and slot are free
                // for the next message at once.
                self.on_event(ended);
            }
        }
    }

    /// Whether a handler (of a batch handler: a batch) may start now.
    pub(super) fn has_slot(&self) -> bool {
        let running = if self.settings.batch.is_some() {
            self.batches
        } else {
            self.parts.running()
        };
        running < self.settings.concurrency
    }

    /// Applies every event already queued; returns how many there were.
    pub(super) fn drain_events(&mut self) -> usize {
        let mut n = 0;
        while let Ok(ev) = self.events.try_recv() {
            self.on_event(ev);
            n += 1;
        }
        n
    }

    /// Waits up to `timeout` for one event, then drains the rest.
    /// Returns `false` on timeout.
    pub(super) fn wait_event(&mut self, timeout: Duration) -> bool {
        match self.events.recv_timeout(timeout) {
            Ok(ev) => {
                self.on_event(ev);
                self.drain_events();
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Asks the committer for every partition's position, if a commit is
    /// due (see [`CommitPlan::due`]) or `force`d.
    pub(super) fn maybe_commit(&mut self, force: bool) {
        if let Some(positions) = self.plan.due(force, &mut self.parts, self.dispatcher.stats()) {
            self.committer.request(CommitRequest::Positions(positions));
        }
    }

    /// Commits at once the partitions that went idle (everything read has
    /// finished and nothing more is fetched) with a finished prefix not yet
    /// asked for, in one request (see [`CommitPlan::idle`]). The committer
    /// coalesces requests that come while a commit is under way. Once per
    /// turn of the poll loop: what goes idle after it waits for the next.
    pub(super) fn commit_idle(&mut self) {
        if self.closing {
            return;
        }
        let stats = self.dispatcher.stats();
        if let Some(positions) = self.plan.idle(&mut self.parts, self.intake.order(), stats) {
            self.committer.request(CommitRequest::Positions(positions));
        }
    }
}

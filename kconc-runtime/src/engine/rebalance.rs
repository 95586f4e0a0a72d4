//! Rebalances: the rdkafka context whose callbacks run the engine's assign
//! and revoke (librdkafka calls them inside `poll`, on the poll thread),
//! and what an assignment reads of its committed metadata.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::commit::CommitRequest;
use super::event::Event;
use super::finished::{self, Finished};
use super::{ffi, Engine, PREFETCH_WARNING_KB};
use crate::sql::Store;
use crate::stats::Stats;
use crate::watch::ClusterWatch;

/// The rdkafka context of a kconc consumer: routes librdkafka's logs into
/// `tracing` and runs the engine's rebalance handling.
pub(crate) struct ClientHooks {
    pub(super) subscriber: Arc<str>,
    pub(super) engine: Mutex<Option<Engine>>,
    /// The app's view of the cluster, which its librdkafka lines go to.
    pub(super) watch: Arc<ClusterWatch>,
    /// Where librdkafka's statistics go (`statistics.interval.ms`).
    stats: Arc<Stats>,
}

impl std::fmt::Debug for ClientHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHooks")
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}

impl ClientHooks {
    /// The context of a consumer of subscriber `subscriber`, with no engine yet.
    pub(crate) fn new(subscriber: Arc<str>, watch: Arc<ClusterWatch>, stats: Arc<Stats>) -> Self {
        Self {
            subscriber,
            engine: Mutex::new(None),
            watch,
            stats,
        }
    }

    pub(super) fn engine(&self) -> MutexGuard<'_, Option<Engine>> {
        // Only the poll thread takes this lock; a poisoned lock means a bug
        // panicked while holding it, and its state is still the best we have.
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientContext for ClientHooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.watch.log(level, &self.subscriber, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.watch.client_error(&self.subscriber, &error, reason);
    }

    /// Kept as given (the latest only), for [`StatsHandle::librdkafka_statistics`](crate::StatsHandle::librdkafka_statistics).
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(mut latest) = self.stats.librdkafka_statistics.lock() {
            *latest = Some(String::from_utf8_lossy(statistics).into_owned());
        }
    }
}

impl ConsumerContext for ClientHooks {
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

    /// The revoke of the consumer's close (the engine is gone: see
    /// `shutdown::close`) waits here, briefly, for the close to end.
    /// rdkafka's `Drop` closes by polling in 100 ms steps until librdkafka
    /// says closed, and the close's last event is none it returns on, so
    /// without this wait an exit took 100 ms longer. After
    /// [`CLOSE_WAIT`] the drop goes on as before.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Revoke(_)) || self.engine().is_some() {
            return;
        }
        let until = std::time::Instant::now() + CLOSE_WAIT;
        while !consumer.closed() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// How long an assignment waits for the committed offsets' metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the close's revoke waits for the close to end (see
/// [`ClientHooks::post_rebalance`]).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How much of `revoke_timeout` a revoke keeps for the commit of the
/// revoked partitions' finished prefix: the handlers get the rest.
pub(super) fn commit_allowance(revoke_timeout: Duration) -> Duration {
    (revoke_timeout / 4).min(Duration::from_secs(1))
}

pub(super) fn describe(tpl: &TopicPartitionList) -> String {
    let mut parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect();
    parts.sort();
    parts.join(",")
}

impl Engine {
    pub(super) fn assign(&mut self, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        let consumer = self.consumer.upgrade();
        for el in tpl.elements() {
            let t = self.parts.topic(el.topic());
            let p = el.partition();
            // Assigned again without a revoke in between (eager protocol):
            // what waited under the old assignment is read again from the
            // committed offset. Its queue handle goes first: dropping it
            // disables the wake-up callback of the librdkafka queue that the
            // new handle shares.
            self.forget_unstarted(t, p);
            drop(self.parts.take_queue(t, p));
            let queue = consumer.as_ref().and_then(|consumer| {
                ffi::split(consumer, el.topic(), p).map(|mut q| {
                    let wake = self.wake.clone();
                    q.set_nonempty_callback(move || {
                        let _ = wake.send(Event::Wake);
                    });
                    q
                })
            });
            let split = queue.is_some();
            self.parts.assign(t, p, queue);
            if consumer.is_some() && !split {
                self.unsplit(t, p);
            }
            self.dispatcher.stats().set_assigned(el.topic(), p, true);
        }
        // With `store = "sql"` the database says what finished, not the
        // committed metadata.
        if let (Some(consumer), Some(store)) = (&consumer, self.dispatcher.store()) {
            self.inherit_stored(consumer, tpl, &*store);
        } else if self.plan.metadata() {
            if let Some(consumer) = &consumer {
                self.inherit(consumer, tpl);
            }
        }
        self.intake.rebuild(self.parts.all());
        let assigned = self.intake.order().len();
        let prefetch_kb = assigned as u64 * self.settings.prefetch_kb;
        if prefetch_kb > PREFETCH_WARNING_KB {
            tracing::warn!(
                subscriber = &*self.settings.name,
                partitions = assigned,
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

    /// How long a request made on the poll thread may take: `limit`, or
    /// what is left of a shutdown under way; `None` when nothing is left.
    fn request_time(&self, limit: Duration) -> Option<Duration> {
        let left = match self.shutdown_deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        };
        (!left.is_zero()).then_some(left)
    }

    /// Reads the newly assigned partitions' committed offsets, and takes
    /// from their metadata what finished above them, to skip. Called before
    /// librdkafka starts fetching them. A set is used only for the log it
    /// was written for: not one that lists an offset at or past the
    /// partition's end now (its log was truncated, or deleted and created
    /// again shorter: the offsets will name new records); and
    /// `Engine::enqueue` drops one whose partition starts reading below its
    /// committed offset. What cannot be read (a request fails or times out,
    /// metadata not kconc's or damaged) is taken as nothing finished:
    /// duplicates, never a skip. During a shutdown nothing is read (nothing
    /// more is dispatched), and the requests end by its deadline.
    fn inherit(&mut self, consumer: &BaseConsumer<ClientHooks>, tpl: &TopicPartitionList) {
        if self.closing {
            return;
        }
        let Some(time) = self.request_time(COMMITTED_TIMEOUT) else {
            return;
        };
        let until = Instant::now() + time;
        let mut ask = TopicPartitionList::new();
        for el in tpl.elements() {
            ask.add_partition(el.topic(), el.partition());
        }
        let committed = consumer.committed_offsets(ask, time);
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    subscriber = &*self.settings.name,
                    error = %e,
                    partitions = %describe(tpl),
                    "could not read the committed metadata; messages finished before the last commit may be handled again"
                );
                return;
            }
        };
        let mut sets = Vec::new();
        for (topic, p, offset, metadata) in ffi::committed_metadata(&committed) {
            if offset < 0 {
                continue; // nothing committed
            }
            let Some(t) = self.parts.find(&topic) else {
                continue;
            };
            match finished::decode(&metadata, offset) {
                Ok(set) if set.is_empty() => {}
                Ok(set) => sets.push((t, p, offset, set)),
                Err(why) => {
                    self.dispatcher
                        .stats()
                        .metadata_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        subscriber = &*self.settings.name,
                        topic,
                        partition = p,
                        committed = offset,
                        "the committed metadata is {why}: not used (nothing is skipped)"
                    );
                }
            }
        }
        if sets.is_empty() {
            return;
        }
        let ends = self.log_ends(consumer, &sets, until);
        for (t, p, offset, set) in sets {
            let last = set.ranges().last().map_or(offset, |&(_, e)| e - 1);
            match ends
                .iter()
                .find(|&&(et, ep, _)| et == t && ep == p)
                .map(|&(_, _, end)| end)
            {
                Some(end) if last < end => {}
                Some(end) => {
                    self.stale(
                        t,
                        p,
                        offset,
                        &format!("lists offset {last}, but the partition ends at {end} now"),
                    );
                    continue;
                }
                None => {
                    self.stale(t, p, offset, "the partition's end could not be read to check it");
                    continue;
                }
            }
            tracing::debug!(
                subscriber = &*self.settings.name,
                topic = &**self.parts.name(t),
                partition = p,
                committed = offset,
                finished = set.count(),
                "finished offsets above the committed one will be skipped"
            );
            self.parts.inherit(t, p, set, offset);
        }
    }

    /// `store = "sql"`: takes the newly assigned partitions' finished
    /// offsets from the database, to skip. Reading starts at Kafka's
    /// committed offset (kconc commits one only once everything below it
    /// is recorded finished in the database) or, where none is, where
    /// `auto.offset.reset` says; every offset the database lists from
    /// there on is skipped. Waits while the database cannot be read (the
    /// rebalance waits with it; health says why): an assignment it could
    /// not check would handle finished messages again. A set that lists
    /// an offset at or past the partition's end now was written for a log
    /// since deleted or truncated: the database forgets it (else the new
    /// records at those offsets would count as finished).
    fn inherit_stored(&mut self, consumer: &BaseConsumer<ClientHooks>, tpl: &TopicPartitionList, store: &dyn Store) {
        if self.closing {
            return;
        }
        let time = self.request_time(COMMITTED_TIMEOUT).unwrap_or(Duration::from_millis(1));
        let mut ask = TopicPartitionList::new();
        for el in tpl.elements() {
            ask.add_partition(el.topic(), el.partition());
        }
        let committed: Vec<(String, i32, i64)> = match consumer.committed_offsets(ask, time) {
            Ok(c) => c
                .elements()
                .iter()
                .map(|el| {
                    let at = match el.offset() {
                        Offset::Offset(o) => o,
                        _ => -1,
                    };
                    (el.topic().to_owned(), el.partition(), at)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(
                    subscriber = &*self.settings.name,
                    error = %e,
                    partitions = %describe(tpl),
                    "could not read the committed offsets; every offset the database lists is skipped"
                );
                tpl.elements()
                    .iter()
                    .map(|el| (el.topic().to_owned(), el.partition(), -1))
                    .collect()
            }
        };
        let mut sets = Vec::new();
        for (topic, p, committed) in committed {
            let Some(t) = self.parts.find(&topic) else {
                continue;
            };
            let Some(ranges) = self.read_stored(store, &topic, p) else {
                return; // shutting down: nothing more is dispatched
            };
            let base = committed.max(0);
            let mut set = Finished::default();
            for (start, end) in ranges {
                set.push_range(start.max(base), end);
            }
            if !set.is_empty() {
                sets.push((t, p, base, set));
            }
        }
        if sets.is_empty() {
            return;
        }
        let until = Instant::now() + COMMITTED_TIMEOUT;
        let ends = self.log_ends(consumer, &sets, until);
        for (t, p, base, set) in sets {
            let last = set.ranges().last().map_or(base, |&(_, e)| e - 1);
            let end = ends
                .iter()
                .find(|&&(et, ep, _)| et == t && ep == p)
                .map(|&(_, _, end)| end);
            if let Some(end) = end.filter(|&end| last >= end) {
                self.stale(
                    t,
                    p,
                    base,
                    &format!("lists offset {last}, but the partition ends at {end} now"),
                );
                self.forget_stored(store, t, p);
                continue;
            }
            tracing::debug!(
                subscriber = &*self.settings.name,
                topic = &**self.parts.name(t),
                partition = p,
                from = base,
                finished = set.count(),
                "finished offsets the database lists will be skipped"
            );
            self.parts.inherit(t, p, set, base);
        }
    }

    /// The finished runs the database lists for partition `p` of `topic`,
    /// once it answers; `None` if shutdown begins first.
    fn read_stored(&self, store: &dyn Store, topic: &str, p: i32) -> Option<crate::sql::Ranges> {
        self.until_stored(store, || store.finished(topic, p))
    }

    /// Makes the database forget partition `p` of topic `t`'s finished
    /// offsets (its offsets were reused), waiting for it while it cannot.
    pub(super) fn forget_stored(&self, store: &dyn Store, t: usize, p: i32) {
        let topic = self.parts.name(t).clone();
        self.until_stored(store, || store.forget(&topic, p));
    }

    /// Runs `op` on the poll thread until the database answers it (health
    /// says why meanwhile), or shutdown begins (`None`).
    fn until_stored<'a, T>(
        &self,
        store: &dyn Store,
        op: impl Fn() -> crate::sql::BoxFuture<'a, Result<T, sqlx::Error>>,
    ) -> Option<T> {
        let mut wait = Duration::from_millis(20);
        loop {
            match self
                .dispatcher
                .runtime()
                .block_on(tokio::time::timeout(COMMITTED_TIMEOUT, op()))
            {
                Ok(Ok(done)) => {
                    store.unavailable(None);
                    return Some(done);
                }
                Ok(Err(e)) => store.unavailable(Some(e.to_string())),
                Err(_) => store.unavailable(Some(format!("no answer within {COMMITTED_TIMEOUT:?}"))),
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    /// The end offsets (high watermarks) of the partitions of `sets` now,
    /// in one request, by `until`; those it could not read are missing.
    fn log_ends(
        &self,
        consumer: &BaseConsumer<ClientHooks>,
        sets: &[(usize, i32, i64, Finished)],
        until: Instant,
    ) -> Vec<(usize, i32, i64)> {
        let mut ask = TopicPartitionList::new();
        for &(t, p, _, _) in sets {
            // The end: ListOffsets' "latest" (-1) in place of a timestamp.
            if ask.add_partition_offset(self.parts.name(t), p, Offset::End).is_err() {
                return Vec::new();
            }
        }
        let time = until.saturating_duration_since(Instant::now());
        let ends = match consumer.offsets_for_times(ask, time.max(Duration::from_millis(1))) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!(subscriber = &*self.settings.name, error = %e, "cannot read the partitions' ends");
                return Vec::new();
            }
        };
        ends.elements()
            .iter()
            .filter(|el| el.error().is_ok())
            .filter_map(|el| {
                let t = self.parts.find(el.topic())?;
                match el.offset() {
                    Offset::Offset(end) => Some((t, el.partition(), end)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Reports that partition `p` of topic `t`'s committed finished offsets
    /// (committed with `offset`) are not used because its offsets were
    /// reused since, and why.
    pub(super) fn stale(&self, t: usize, p: i32, offset: i64, why: &str) {
        self.dispatcher.stats().metadata_stale.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            subscriber = &*self.settings.name,
            topic = &**self.parts.name(t),
            partition = p,
            committed = offset,
            "the finished offsets committed with this partition's offset were written for another log: {why}; \
             not used (nothing is skipped; they are handled again)"
        );
    }

    /// A partition whose queue librdkafka could not split off the
    /// consumer's (it has no partition object for it; not seen in
    /// practice): its messages would come through the consumer's queue,
    /// past every bound and stop kconc keeps, so it is stopped before its
    /// first message instead: nothing of it is handled or committed until it
    /// is assigned again or the program restarts, and health says why.
    pub(super) fn unsplit(&mut self, t: usize, p: i32) {
        let reason = "its messages cannot be read apart from the consumer's (librdkafka gave no queue for the \
                      partition); nothing of it is handled or committed until it is assigned again or the program \
                      restarts";
        tracing::error!(
            subscriber = &*self.settings.name,
            topic = &**self.parts.name(t),
            partition = p,
            "partition stopped: {reason}"
        );
        self.parts.stop(t, p, i64::MIN);
        let stats = self.dispatcher.stats();
        stats.stopped.fetch_add(1, Ordering::Relaxed);
        stats.set_stopped(self.parts.name(t), p, Some((-1, reason.to_owned())));
    }

    /// Stops dispatching the revoked partitions, waits (bounded) for their
    /// in-flight handlers, commits their finished prefix synchronously and
    /// drops their state, all within `revoke_timeout`. Other partitions
    /// keep running meanwhile. A lost assignment (the group has moved on
    /// without this member) is dropped at once, without a wait or a commit.
    pub(super) fn revoke(&mut self, consumer: &BaseConsumer<ClientHooks>, tpl: &TopicPartitionList) {
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
            if let Some(t) = self.parts.find(el.topic()) {
                if self.parts.revoke(t, el.partition()) {
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
            while self.parts.in_flight(&revoked) > 0 {
                // The partitions that stay keep starting handlers meanwhile
                // (on the workers: this is a rebalance callback).
                self.start_ready();
                let left = handlers_until.saturating_duration_since(Instant::now());
                if left.is_zero() || !self.wait_event(left) {
                    tracing::warn!(
                        subscriber = &*self.settings.name,
                        still_running = self.parts.in_flight(&revoked),
                        "revoke timeout: committing what finished; the rest will be redelivered to the new owner"
                    );
                    break;
                }
            }
        }
        let positions = self.plan.positions(&mut self.parts, &revoked, self.dispatcher.stats());
        let assigned = self.parts.assigned(&revoked);
        let result = if lost {
            self.committer.request(CommitRequest::Forget(assigned));
            Ok(())
        } else {
            self.committer.request(CommitRequest::Positions(positions));
            self.committer.flush(assigned, deadline)
        };
        for &(t, p) in &revoked {
            self.drop_partition(t, p);
        }
        self.intake.rebuild(self.parts.all());
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

    /// Drops partition `p` of topic `t`'s state, and what health and
    /// metrics show of it.
    pub(super) fn drop_partition(&mut self, t: usize, p: i32) {
        let topic = self.parts.name(t).clone();
        let stats = self.dispatcher.stats();
        stats.set_assigned(&topic, p, false);
        stats.forget_partition(&topic, p);
        let paused = self.intake.forget(t, p);
        if let Some(stopped) = self.parts.remove(t, p) {
            if paused {
                stats.set_paused(&topic, p, false);
            }
            if stopped {
                stats.set_stopped(&topic, p, None);
            }
        }
    }

    /// Forgets a partition's messages that have not started: fetched ones
    /// and retries (revoke, stop, or a new assignment of it). They are read
    /// again from the committed offset by whoever owns it next.
    pub(super) fn forget_unstarted(&mut self, t: usize, p: i32) {
        self.forget_unstarted_from(t, p, i64::MIN);
    }

    /// Forgets what of a partition has not started at `from` or after (a
    /// stop there): its earlier messages still run in their lanes' order.
    pub(super) fn forget_unstarted_from(&mut self, t: usize, p: i32, from: i64) {
        self.filling.remove(&(t, p));
        self.waiting.drop_partition(t, p, from);
        self.delayed.drop_partition(t, p, from);
    }

    /// Starts a partition's tracking afresh (a new epoch) on its queue: what
    /// waited under the old one is forgotten, its running handlers' ends
    /// count for nothing (their lanes are freed as they end), and so is
    /// what it asked the committer to commit and was not committed yet (a
    /// position, and finished offsets, of the log before the position went
    /// back). Nothing inherited is kept.
    pub(super) fn restart_partition(&mut self, t: usize, p: i32) {
        self.forget_unstarted(t, p);
        if let Some(old) = self.parts.restart(t, p) {
            if let Some(base) = old.inherited_base {
                self.stale(t, p, base, "the partition's position went back");
            }
            self.committer
                .request(CommitRequest::Forget(vec![(self.parts.key(t, p), old.old_epoch)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::TestEngine;
    use crate::message::Message;
    use crate::subscriber::Subscriber;

    /// A partition whose queue could not be split (review N3: its messages
    /// would come through the consumer's queue past every bound and stop)
    /// is stopped before its first message, and says why; nothing of it
    /// starts or is read.
    #[test]
    fn a_partition_that_cannot_be_split_is_stopped_before_its_first_message() {
        let mut te = TestEngine::new(&Subscriber::new("s", ["t"], "g", |_m: Message| async {}));
        te.assign("t", 1);
        te.engine.unsplit(0, 0);
        let parts = &te.engine.parts;
        assert!(parts.holds_back(0, 0, 0) && parts.holds_back(0, 0, i64::MAX));
        assert_eq!(te.engine.fill(), 0);
        let stopped = te.engine.dispatcher.stats().stopped_partitions();
        assert_eq!((stopped.len(), stopped[0].offset), (1, -1), "{stopped:?}");
        assert!(stopped[0].reason.contains("cannot be read apart"), "{stopped:?}");
    }

    /// Requests the poll thread makes (the committed offsets read at an
    /// assignment) take their own limit, or during a shutdown only what is
    /// left of it (review N5); none is made once nothing is left.
    #[test]
    fn requests_during_a_shutdown_end_by_its_deadline() {
        use std::time::{Duration, Instant};
        let mut te = TestEngine::new(&Subscriber::new("s", ["t"], "g", |_m: Message| async {}));
        let limit = Duration::from_secs(10);
        assert_eq!(te.engine.request_time(limit), Some(limit));
        te.engine.shutdown_deadline = Some(Instant::now() + Duration::from_millis(300));
        let left = te.engine.request_time(limit);
        assert!(left.is_some_and(|l| l <= Duration::from_millis(300)), "{left:?}");
        te.engine.shutdown_deadline = Some(Instant::now());
        assert_eq!(te.engine.request_time(limit), None, "nothing is left");
    }
}

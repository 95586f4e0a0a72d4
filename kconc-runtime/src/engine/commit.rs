//! Commits: the one place offsets are written to the broker.
//!
//! A dedicated thread takes the positions the poll loop wants committed,
//! coalesces them (only the newest position per partition matters), and
//! commits synchronously, one commit at a time, so that a slow or failing
//! commit never stalls polling and two commits can never overtake each other.
//! Within one assignment of a partition (an *epoch*) the committed position
//! only moves forward; a failed commit is retried with the newest position,
//! never with the stale one that failed. What an assignment asked to have
//! committed is forgotten only for that assignment (and older ones): a
//! partition that came back keeps committing. A revoke's commit that could
//! not be made by its deadline is dropped, never made late, after the
//! partition may have moved to another member.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::event::{Event, PartitionKey};
use super::spares::Spares;
use crate::stats::Stats;
use crate::telemetry::Telemetry;

/// A partition in the assignment numbered `epoch`.
pub(crate) type Assigned = (PartitionKey, u64);

/// A position to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) key: PartitionKey,
    /// The assignment it belongs to.
    pub(crate) epoch: u64,
    /// The next offset to read.
    pub(crate) offset: i64,
    /// What to commit with it: the finished offsets above it, encoded.
    pub(crate) metadata: Option<String>,
    /// The leader epoch of the record before it (KIP-320; -1: not known).
    pub(crate) leader_epoch: i32,
}

/// What the poll loop asks of the committer.
#[derive(Debug)]
pub(crate) enum CommitRequest {
    /// Commit these positions.
    Positions(Vec<Wanted>),
    /// Forget these partitions' assignments (and older ones) without
    /// committing (their assignment was lost: the member is no longer in
    /// the group, a commit would fail).
    Forget(Vec<Assigned>),
    /// Commit now, reply with the outcome, then forget `forget` (revoked
    /// partitions). Served after `deadline`, it commits nothing of
    /// `forget`: the partitions may have moved on by then.
    Flush {
        forget: Vec<Assigned>,
        deadline: Instant,
        reply: Sender<Result<(), FlushError>>,
    },
}

#[derive(Debug)]
struct Entry {
    epoch: u64,
    wanted: i64,
    metadata: Option<String>,
    leader_epoch: i32,
    committed: Option<i64>,
    /// `wanted` (or its metadata) is not committed yet.
    dirty: bool,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Handle to the committer thread. Dropping the sender side stops it.
#[derive(Debug)]
pub(crate) struct Committer {
    tx: Sender<CommitRequest>,
    /// Told when the thread has ended.
    ended: Receiver<()>,
    /// The emptied vectors of positions requests, back from the thread.
    spares: Arc<Spares<Wanted>>,
}

impl Committer {
    /// Starts the thread. It reports what it committed to `events` (the
    /// poll loop's), as [`Event::Committed`].
    pub(crate) fn spawn<C: ConsumerContext + 'static>(
        name: &str,
        group: String,
        consumer: Arc<BaseConsumer<C>>,
        stats: Arc<Stats>,
        events: Sender<Event>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel();
        let spares: Arc<Spares<Wanted>> = Arc::default();
        let book = Book {
            spares: spares.clone(),
            ..Book::default()
        };
        // Alive from now (the poll loop checks it from its first turn)
        // until the thread ends.
        let alive = stats.alive_while(|s| &s.committer_alive);
        std::thread::Builder::new()
            .name(format!("kconc-commit-{name}"))
            .spawn(move || {
                let _alive = alive;
                run(&rx, book, &group, &consumer, &stats, &events);
                let _ = ended_tx.send(());
            })?;
        Ok(Self { tx, ended, spares })
    }

    /// Where the thread puts the emptied vectors of positions requests,
    /// for the poll thread's next ones.
    pub(crate) fn spares(&self) -> Arc<Spares<Wanted>> {
        self.spares.clone()
    }

    /// A committer with no thread: what it is asked comes out of the
    /// receiver (for the engine's unit tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> (Self, Receiver<CommitRequest>) {
        let (tx, rx) = mpsc::channel();
        let (_, ended) = mpsc::channel();
        let spares = Arc::default();
        (Self { tx, ended, spares }, rx)
    }

    pub(crate) fn request(&self, req: CommitRequest) {
        // The thread only ends when this handle drops, so a send cannot fail
        // while it is alive; if it did, the offsets stay uncommitted (safe).
        let _ = self.tx.send(req);
    }

    /// Commits everything asked so far and waits, until `deadline` at the
    /// latest, for the result; then forgets `forget`. What of `forget` is
    /// not committed by the deadline is never committed.
    pub(crate) fn flush(&self, forget: Vec<Assigned>, deadline: Instant) -> Result<(), FlushError> {
        let (reply, rx) = mpsc::channel();
        self.request(CommitRequest::Flush {
            forget,
            deadline,
            reply,
        });
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(result) => result,
            Err(_) => Err(FlushError::TimedOut),
        }
    }

    /// Stops the thread after it has served every request sent so far,
    /// waiting for it until `deadline`. Returns `false` if it had not ended
    /// by then (a commit that does not return): it is left to end alone.
    pub(crate) fn stop(self, deadline: Instant) -> bool {
        drop(self.tx);
        self.ended
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum FlushError {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("the commit did not finish in time")]
    TimedOut,
}

/// The committer's memory: what each partition's assignment wants
/// committed, and which assignments are forgotten.
#[derive(Debug, Default)]
struct Book {
    entries: HashMap<PartitionKey, Entry>,
    /// The newest epoch forgotten per partition: a request from that epoch or
    /// an older one must never bring the partition back.
    forgotten: HashMap<PartitionKey, u64>,
    /// The broker refused metadata this long: it is dropped from every
    /// request, so a change of metadata alone is no new commit.
    without_metadata: bool,
    /// The broker refused a commit's leader epoch: commits go without it.
    without_leader_epochs: bool,
    /// Where the emptied vectors of positions requests go back to.
    spares: Arc<Spares<Wanted>>,
}

/// What a broker refused of what commits carry (they go on without it).
#[derive(Clone, Copy, Debug)]
enum Refused {
    Metadata,
    LeaderEpoch,
}

/// What serving one batch of requests leaves to do after its commit.
#[derive(Debug, Default)]
struct Served {
    /// Flushes waiting for the commit's outcome.
    waiters: Vec<Sender<Result<(), FlushError>>>,
    /// Assignments to forget once the commit is made.
    forget: Vec<Assigned>,
}

impl Book {
    /// Takes in a batch of requests at `now`: positions are merged, lost
    /// assignments forgotten at once, and flushes either wait for the
    /// commit (and forget afterwards) or, past their deadline, forget at
    /// once without committing and are told so.
    fn take(&mut self, requests: impl IntoIterator<Item = CommitRequest>, now: Instant) -> Served {
        let mut served = Served::default();
        for req in requests {
            match req {
                CommitRequest::Positions(mut ps) => {
                    for mut w in ps.drain(..) {
                        if self.forgotten.get(&w.key).is_some_and(|&f| w.epoch <= f) {
                            continue;
                        }
                        if self.without_metadata {
                            w.metadata = None;
                        }
                        merge(&mut self.entries, w);
                    }
                    self.spares.put(ps);
                }
                CommitRequest::Forget(assigned) => self.forget(assigned),
                CommitRequest::Flush {
                    forget,
                    deadline,
                    reply,
                } => {
                    if now > deadline {
                        self.forget(forget);
                        let _ = reply.send(Err(FlushError::TimedOut));
                    } else {
                        served.forget.extend(forget);
                        served.waiters.push(reply);
                    }
                }
            }
        }
        served
    }

    /// Stops sending what a commit that failed with `e` says the broker
    /// refuses, if it still sent it: metadata this long (the broker's
    /// `offset.metadata.max.bytes` is below kconc's limit), or a leader
    /// epoch (Kafka stores it unchecked; librdkafka's mock cluster refuses
    /// one older than the partition's current epoch).
    fn drop_refused(&mut self, e: &KafkaError) -> Option<Refused> {
        match e.rdkafka_error_code()? {
            RDKafkaErrorCode::OffsetMetadataTooLarge if !self.without_metadata => {
                self.drop_metadata();
                Some(Refused::Metadata)
            }
            RDKafkaErrorCode::FencedLeaderEpoch | RDKafkaErrorCode::UnknownLeaderEpoch
                if !self.without_leader_epochs =>
            {
                self.without_leader_epochs = true;
                Some(Refused::LeaderEpoch)
            }
            _ => None,
        }
    }

    /// Commits without metadata from now on, what is waiting included.
    fn drop_metadata(&mut self) {
        self.without_metadata = true;
        for e in self.entries.values_mut() {
            e.metadata = None;
        }
    }

    /// Forgets each partition's entry of that assignment or an older one;
    /// a newer assignment's entry stays.
    fn forget(&mut self, assigned: Vec<Assigned>) {
        for (key, epoch) in assigned {
            if self.entries.get(&key).is_some_and(|e| e.epoch <= epoch) {
                self.entries.remove(&key);
            }
            let f = self.forgotten.entry(key).or_insert(epoch);
            *f = (*f).max(epoch);
        }
    }

    /// The positions to commit now: those (or their metadata) not
    /// committed yet.
    fn wanted(&self) -> Vec<Wanted> {
        self.entries
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(k, e)| Wanted {
                key: k.clone(),
                epoch: e.epoch,
                offset: e.wanted,
                metadata: e.metadata.clone(),
                leader_epoch: if self.without_leader_epochs { -1 } else { e.leader_epoch },
            })
            .collect()
    }

    /// Records a successful commit of `sent`.
    fn committed(&mut self, sent: &[Wanted]) {
        for w in sent {
            if let Some(e) = self.entries.get_mut(&w.key).filter(|e| e.epoch == w.epoch) {
                e.committed = Some(e.committed.map_or(w.offset, |c| c.max(w.offset)));
                if e.wanted == w.offset && e.metadata == w.metadata {
                    e.dirty = false;
                }
            }
        }
    }
}

fn run<C: ConsumerContext>(
    rx: &Receiver<CommitRequest>,
    mut book: Book,
    group: &str,
    consumer: &BaseConsumer<C>,
    stats: &Stats,
    events: &Sender<Event>,
) {
    let mut retry_at: Option<Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let first = match retry_at {
            None => match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => return,
            },
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        let requests = first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()));
        let served = book.take(requests, Instant::now());
        let mut result = commit_wanted(&mut book, group, consumer, stats, events);
        // A broker that refuses part of what commits carry gets them
        // without it from now on, this one at once (each part once).
        while let Some(refused) = result.as_ref().err().and_then(|e| book.drop_refused(e)) {
            match refused {
                Refused::Metadata => {
                    stats
                        .metadata_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        group,
                        "the broker refuses commit metadata this long (offset.metadata.max.bytes); committing without the finished offsets from now on"
                    );
                }
                Refused::LeaderEpoch => {
                    stats
                        .leader_epoch_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        group,
                        "the broker refuses the leader epoch of commits; committing without it from now on"
                    );
                }
            }
            result = commit_wanted(&mut book, group, consumer, stats, events);
        }
        match &result {
            Ok(()) => {
                retry_at = None;
                backoff = RETRY_MIN;
            }
            Err(_) => {
                retry_at = Some(Instant::now() + backoff);
                backoff = next_backoff(backoff);
            }
        }
        book.forget(served.forget);
        for w in served.waiters {
            let _ = w.send(result.clone().map_err(FlushError::Kafka));
        }
    }
}

/// The wait after a failed commit that followed a wait of `backoff`:
/// doubled, up to `RETRY_MAX`.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(RETRY_MAX)
}

/// Takes in a wanted position. Within an assignment the poll loop asks in
/// order, so a request at or past the entry's position is the newest (its
/// metadata too); one behind it is stale and ignored.
fn merge(entries: &mut HashMap<PartitionKey, Entry>, w: Wanted) {
    match entries.get_mut(&w.key) {
        Some(e) if e.epoch == w.epoch => {
            if w.offset > e.wanted || (w.offset == e.wanted && w.metadata != e.metadata) {
                e.wanted = w.offset;
                e.metadata = w.metadata;
                e.leader_epoch = w.leader_epoch;
                e.dirty = true;
            }
        }
        Some(e) if e.epoch > w.epoch => {} // a request from an older assignment: ignore
        _ => {
            entries.insert(
                w.key,
                Entry {
                    epoch: w.epoch,
                    wanted: w.offset,
                    metadata: w.metadata,
                    leader_epoch: w.leader_epoch,
                    committed: None,
                    dirty: true,
                },
            );
        }
    }
}

/// A failed commit's `error.type`: the broker's error code, else
/// librdkafka's error's kind.
fn commit_error_type(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "commit_failed".to_owned(),
    }
}

/// The list a commit of `sent` sends: each offset with its metadata and
/// leader epoch.
fn commit_list(sent: &[Wanted]) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (i, w) in sent.iter().enumerate() {
        let mut el = tpl.add_partition(&w.key.topic, w.key.partition);
        el.set_offset(Offset::Offset(w.offset))?;
        // Set once (rdkafka's setter does not free an earlier value).
        if let Some(m) = w.metadata.as_deref().filter(|m| !m.is_empty()) {
            el.set_metadata(m);
        }
        if w.leader_epoch >= 0 {
            super::ffi::set_leader_epoch(&mut tpl, i, w.leader_epoch);
        }
    }
    Ok(tpl)
}

fn commit_wanted<C: ConsumerContext>(
    book: &mut Book,
    group: &str,
    consumer: &BaseConsumer<C>,
    stats: &Stats,
    events: &Sender<Event>,
) -> Result<(), KafkaError> {
    let sent = book.wanted();
    if sent.is_empty() {
        // Nothing is waiting to be committed (what failed before has been
        // committed since, or forgotten with its assignment): commits are
        // not failing any more.
        stats
            .commit_failing_since_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
    let tpl = commit_list(&sent)?;
    // The commit's span (a settle operation) is named after its topic
    // when it has one.
    let topic = sent
        .first()
        .map(|w| &*w.key.topic)
        .filter(|t| sent.iter().all(|w| &*w.key.topic == *t));
    let span = Telemetry::commit_span(group, topic, sent.len());
    let started = Instant::now();
    let committed = span.in_scope(|| consumer.commit(&tpl, CommitMode::Sync));
    Telemetry::commit_ended(
        &span,
        group,
        topic,
        started.elapsed(),
        committed.as_ref().err().map(commit_error_type),
    );
    match committed {
        Ok(()) => {
            stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stats
                .last_commit_ms
                .store(crate::stats::unix_ms(), std::sync::atomic::Ordering::Relaxed);
            stats
                .commit_failing_since_ms
                .store(0, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut committed) = stats.committed.lock() {
                for w in &sent {
                    committed.insert((w.key.topic.to_string(), w.key.partition), w.offset);
                }
            }
            book.committed(&sent);
            let done = sent.into_iter().map(|w| (w.key, w.epoch, w.offset)).collect();
            let _ = events.send(Event::Committed(done));
            tracing::debug!(group, partitions = tpl.count(), "committed offsets");
            Ok(())
        }
        Err(e) => {
            stats.commit_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = stats.commit_failing_since_ms.compare_exchange(
                0,
                crate::stats::unix_ms(),
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(group, error = %e, partitions = tpl.count(), "offset commit failed; will retry with the newest positions");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    /// A position of partition `p` with no leader epoch.
    fn w(p: i32, epoch: u64, offset: i64, metadata: Option<String>) -> Wanted {
        Wanted {
            key: key(p),
            epoch,
            offset,
            metadata,
            leader_epoch: -1,
        }
    }

    fn flush(forget: Vec<Assigned>, deadline: Instant) -> (CommitRequest, Receiver<Result<(), FlushError>>) {
        let (reply, rx) = mpsc::channel();
        (
            CommitRequest::Flush {
                forget,
                deadline,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn merge_keeps_the_highest_position_of_an_epoch() {
        let mut m = HashMap::new();
        merge(&mut m, w(0, 1, 10, None));
        merge(&mut m, w(0, 1, 5, None));
        assert_eq!(m[&key(0)].wanted, 10);
        merge(&mut m, w(0, 1, 12, None));
        assert_eq!(m[&key(0)].wanted, 12);
    }

    #[test]
    fn merge_starts_afresh_for_a_new_epoch_and_ignores_an_old_one() {
        let mut m = HashMap::new();
        merge(&mut m, w(0, 1, 10, None));
        m.get_mut(&key(0)).unwrap().committed = Some(10);
        merge(&mut m, w(0, 2, 4, None));
        assert_eq!((m[&key(0)].wanted, m[&key(0)].committed), (4, None));
        merge(&mut m, w(0, 1, 50, None));
        assert_eq!(m[&key(0)].wanted, 4);
    }

    /// The same position with other metadata (more finished above it) is
    /// committed again; once committed as asked, it is not.
    #[test]
    fn new_metadata_at_the_same_position_is_committed_again() {
        let now = Instant::now();
        let mut book = Book::default();
        book.take([CommitRequest::Positions(vec![w(0, 1, 10, None)])], now);
        book.committed(&book.wanted());
        assert!(book.wanted().is_empty());
        let m = Some("kconc:x".to_owned());
        book.take([CommitRequest::Positions(vec![w(0, 1, 10, m.clone())])], now);
        assert_eq!(book.wanted(), vec![w(0, 1, 10, m.clone())]);
        // A commit of what was wanted before the newest request does not
        // count as committing the newest.
        book.committed(&[w(0, 1, 10, None)]);
        assert_eq!(book.wanted(), vec![w(0, 1, 10, m.clone())]);
        book.committed(&book.wanted());
        assert!(book.wanted().is_empty());
        // A stale request (behind the position) changes nothing.
        book.take(
            [CommitRequest::Positions(vec![w(0, 1, 9, Some("kconc:y".into()))])],
            now,
        );
        assert!(book.wanted().is_empty());
    }

    /// Once the broker refused the metadata, what waits is committed
    /// without it, and new metadata at a committed position is no commit.
    #[test]
    fn without_metadata_a_change_of_metadata_alone_is_no_commit() {
        let now = Instant::now();
        let mut book = Book::default();
        book.take(
            [CommitRequest::Positions(vec![w(0, 1, 10, Some("kconc:a".into()))])],
            now,
        );
        book.drop_metadata();
        assert_eq!(book.wanted(), vec![w(0, 1, 10, None)]);
        book.committed(&book.wanted());
        book.take(
            [CommitRequest::Positions(vec![w(0, 1, 10, Some("kconc:b".into()))])],
            now,
        );
        assert!(book.wanted().is_empty());
        book.take(
            [CommitRequest::Positions(vec![w(0, 1, 11, Some("kconc:c".into()))])],
            now,
        );
        assert_eq!(book.wanted(), vec![w(0, 1, 11, None)]);
    }

    /// A revoke's flush forgets the revoked assignment after the commit;
    /// the partition assigned back to this member meanwhile (a new epoch,
    /// in the same batch) keeps its entry and goes on committing.
    #[test]
    fn a_deferred_forget_removes_only_its_own_assignment() {
        let now = Instant::now();
        let mut book = Book::default();
        let (flush, _rx) = flush(vec![(key(0), 1)], now + Duration::from_secs(5));
        let served = book.take(
            [
                CommitRequest::Positions(vec![w(0, 1, 10, None)]),
                flush,
                CommitRequest::Positions(vec![w(0, 2, 5, None)]),
            ],
            now,
        );
        // What the commit would send: the newest assignment's position.
        assert_eq!(book.wanted(), vec![w(0, 2, 5, None)]);
        book.committed(&book.wanted());
        book.forget(served.forget);
        assert_eq!(
            book.entries.get(&key(0)).map(|e| (e.epoch, e.committed)),
            Some((2, Some(5)))
        );
        assert_eq!(book.forgotten.get(&key(0)), Some(&1));
        book.take([CommitRequest::Positions(vec![w(0, 2, 9, None)])], now);
        assert_eq!(book.wanted(), vec![w(0, 2, 9, None)], "epoch 2 still commits");
        book.take([CommitRequest::Positions(vec![w(0, 1, 99, None)])], now);
        assert_eq!(book.wanted(), vec![w(0, 2, 9, None)], "epoch 1 never comes back");
    }

    /// A revoke's flush that reaches the committer after its deadline (the
    /// committer was stuck in a slow commit) commits nothing of the revoked
    /// partitions: by then they may belong to another member, whose newer
    /// commit this one would move backwards.
    #[test]
    fn a_flush_served_after_its_deadline_commits_nothing_of_its_partitions() {
        let now = Instant::now();
        let mut book = Book::default();
        let (flush, rx) = flush(vec![(key(0), 1)], now);
        let served = book.take(
            [
                CommitRequest::Positions(vec![w(0, 1, 10, None), w(1, 1, 7, None)]),
                flush,
            ],
            now + Duration::from_millis(1),
        );
        assert!(matches!(rx.try_recv(), Ok(Err(FlushError::TimedOut))));
        assert!(served.waiters.is_empty());
        assert_eq!(
            book.wanted(),
            vec![w(1, 1, 7, None)],
            "only the kept partition is committed"
        );
    }

    /// A committer on a mock cluster whose next `times` OffsetCommit
    /// requests fail with `error`, and its counters (the cluster lives as
    /// long as it is kept).
    fn committer_whose_commits_fail(
        error: rdkafka::types::RDKafkaRespErr,
        times: usize,
    ) -> (crate::EmbeddedCluster, Committer, Arc<Stats>) {
        let cluster = crate::EmbeddedCluster::start(1).unwrap();
        cluster.create_topic("t", 1).unwrap();
        let consumer: BaseConsumer = cluster
            .client_config()
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        cluster
            .mock()
            .unwrap()
            .request_errors(rdkafka::types::RDKafkaApiKey::OffsetCommit, &vec![error; times]);
        let stats = Arc::new(Stats::default());
        let (events, _events) = mpsc::channel();
        let committer = Committer::spawn("s", "g".into(), Arc::new(consumer), stats.clone(), events).unwrap();
        (cluster, committer, stats)
    }

    /// A commit fails, and what it held is then forgotten (its partitions
    /// revoked): nothing is left to commit, so commits are not failing any
    /// more. The flag used to stay set for ever, and health then reported
    /// "commits failing" until a restart.
    #[test]
    fn the_commit_failure_flag_clears_once_nothing_is_left_to_commit() {
        // Three, should librdkafka send the request again (a connection
        // reset under load): the commit asked for must fail.
        let (_cluster, committer, stats) = committer_whose_commits_fail(
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
            3,
        );
        committer.request(CommitRequest::Positions(vec![w(0, 1, 10, None)]));
        let flushed = committer.flush(vec![(key(0), 1)], Instant::now() + Duration::from_secs(30));
        assert!(flushed.is_err(), "the injected error did not fail the commit");
        let failing = || stats.commit_failing_since_ms.load(std::sync::atomic::Ordering::Relaxed);
        assert_ne!(failing(), 0);
        let until = Instant::now() + Duration::from_secs(30);
        while failing() != 0 {
            assert!(
                Instant::now() < until,
                "commits still reported failing with nothing to commit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(committer.stop(Instant::now() + Duration::from_secs(30)));
    }

    /// A failed commit is tried again after a wait that doubles (100 ms,
    /// 200 ms, 400 ms), not at once: four failures of one commit, with no
    /// new request in between, take at least 700 ms from the request (a
    /// busy machine only makes it longer).
    #[test]
    fn a_failed_commit_is_tried_again_only_after_its_backoff() {
        let (_cluster, committer, stats) = committer_whose_commits_fail(
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
            12,
        );
        let asked = Instant::now();
        committer.request(CommitRequest::Positions(vec![w(0, 1, 10, None)]));
        let failures = || stats.commit_failures.load(std::sync::atomic::Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(30);
        while failures() < 4 {
            assert!(Instant::now() < until, "{} failed commits in 30 s", failures());
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = asked.elapsed();
        assert!(
            took >= RETRY_MIN * 7,
            "four failed commits {took:?} after the request: retried without waiting"
        );
        assert!(committer.stop(Instant::now() + Duration::from_secs(30)));
    }

    /// Each committed offset carries the leader epoch of the record before
    /// it (KIP-320), where it is known.
    #[test]
    fn a_commit_carries_each_positions_leader_epoch() {
        let mut sent = vec![w(0, 1, 10, None), w(1, 1, 7, Some("kconc:x".into()))];
        sent[0].leader_epoch = 4;
        let tpl = commit_list(&sent).unwrap();
        assert_eq!(super::super::ffi::leader_epochs(&tpl), vec![4, -1]);
        assert_eq!(tpl.elements()[1].metadata(), "kconc:x");
    }

    /// A broker that refuses a commit's leader epoch (librdkafka's mock
    /// cluster refuses one older than the partition's current epoch; Kafka
    /// stores it unchecked) gets the same commit without it at once, and
    /// every later one without it.
    #[test]
    fn a_broker_that_refuses_leader_epochs_gets_commits_without_them() {
        let (_cluster, committer, stats) =
            committer_whose_commits_fail(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH, 1);
        let mut first = w(0, 1, 10, None);
        first.leader_epoch = 0;
        committer.request(CommitRequest::Positions(vec![first]));
        let flushed = committer.flush(Vec::new(), Instant::now() + Duration::from_secs(30));
        assert!(flushed.is_ok(), "{flushed:?}");
        let s = stats.snapshot();
        assert_eq!((s.commit_leader_epoch_refused, s.commits), (1, 1), "{s:?}");
        assert!(committer.stop(Instant::now() + Duration::from_secs(30)));
    }

    #[test]
    fn a_lost_assignment_is_forgotten_at_once_and_only_its_own_epoch() {
        let now = Instant::now();
        let mut book = Book::default();
        book.take([CommitRequest::Positions(vec![w(0, 3, 10, None)])], now);
        book.take([CommitRequest::Forget(vec![(key(0), 2)])], now);
        assert_eq!(
            book.wanted(),
            vec![w(0, 3, 10, None)],
            "an older epoch's forget spares epoch 3"
        );
        book.take([CommitRequest::Forget(vec![(key(0), 3)])], now);
        assert!(book.wanted().is_empty());
    }
    /// `stop` says whether the thread ended by the deadline: a committer
    /// whose thread never says so is reported as still running.
    #[test]
    fn stop_says_when_the_thread_did_not_end() {
        let (committer, _requests) = Committer::for_test();
        assert!(!committer.stop(Instant::now()));
    }

    /// The same request again, once committed, is no new commit.
    #[test]
    fn a_position_committed_as_asked_is_not_committed_again() {
        let now = Instant::now();
        let mut book = Book::default();
        book.take([CommitRequest::Positions(vec![w(0, 1, 10, None)])], now);
        book.committed(&book.wanted());
        book.take([CommitRequest::Positions(vec![w(0, 1, 10, None)])], now);
        assert!(book.wanted().is_empty());
    }

    /// Each refusal is acted on once: metadata, then leader epochs, are
    /// left out from then on; another error is no refusal.
    #[test]
    fn each_refusal_is_taken_once() {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let refused = |code| KafkaError::ConsumerCommit(code);
        let mut book = Book::default();
        assert!(book.drop_refused(&refused(Code::RequestTimedOut)).is_none());
        assert!(matches!(
            book.drop_refused(&refused(Code::OffsetMetadataTooLarge)),
            Some(Refused::Metadata)
        ));
        assert!(
            book.drop_refused(&refused(Code::OffsetMetadataTooLarge)).is_none(),
            "already without"
        );
        assert!(matches!(
            book.drop_refused(&refused(Code::FencedLeaderEpoch)),
            Some(Refused::LeaderEpoch)
        ));
        assert!(
            book.drop_refused(&refused(Code::UnknownLeaderEpoch)).is_none(),
            "already without"
        );
        let mut book = Book::default();
        assert!(matches!(
            book.drop_refused(&refused(Code::UnknownLeaderEpoch)),
            Some(Refused::LeaderEpoch)
        ));
        assert!(book.drop_refused(&KafkaError::Canceled).is_none());
    }

    #[test]
    fn a_failed_commit_waits_twice_as_long_each_time_up_to_five_seconds() {
        let waits: Vec<Duration> = std::iter::successors(Some(RETRY_MIN), |&b| Some(next_backoff(b)))
            .take(8)
            .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}

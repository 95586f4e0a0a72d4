//! Model-based property tests of the engine's owners together (the
//! partitions, the schedule, the retries and the commit plan), wired as the
//! poll loop wires them, without a broker: random sequences of fetches,
//! starts (of single messages, or of batches for a batch handler, whose
//! messages end together as one call's), finishes, failures (retried or
//! stopping the partition),
//! revokes, lost assignments, assignments again (reading on from the last
//! commit, with its finished set), positions going back, and commits
//! acknowledged or failed, checked against a plain model after every step.
//!
//! `PROPTEST_CASES=5000 cargo test -p kconc-runtime --lib model` runs more;
//! a shrunk failure is kept in `proptest-regressions/` and runs first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use proptest::prelude::*;

use super::commit::Wanted;
use super::commit_plan::CommitPlan;
use super::event::MessageTag;
use super::finished;
use super::partitions::{Partitions, Read};
use super::retry::Retries;
use super::schedule::Schedule;
use crate::message::Message;
use crate::stats::Stats;
use crate::subscriber::OrderingMode;

const PARTITIONS: i32 = 2;
const KEYS: i64 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Read up to `n` records of partition `p` from where it reads.
    Fetch { p: i32, n: usize },
    /// Start what may start (due retries first).
    Start,
    /// The `i`-th running handler (modulo) finishes.
    Finish { i: usize },
    /// It fails: with retries left (due at once), or for good under `stop`.
    Fail { i: usize, retry: bool },
    /// Partition `p` is revoked (its finished prefix committed), or lost.
    Revoke { p: i32, lost: bool },
    /// Partition `p` is assigned (again), reading from its last commit.
    Assign { p: i32 },
    /// Partition `p`'s position goes back by `by` (a log truncated).
    Back { p: i32, by: i64 },
    /// A commit of every partition: acknowledged, or failed.
    Commit { ack: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PARTITIONS, 1usize..6).prop_map(|(p, n)| Op::Fetch { p, n }),
        3 => Just(Op::Start),
        4 => any::<usize>().prop_map(|i| Op::Finish { i }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, retry)| Op::Fail { i, retry }),
        1 => (0..PARTITIONS, any::<bool>()).prop_map(|(p, lost)| Op::Revoke { p, lost }),
        1 => (0..PARTITIONS).prop_map(|p| Op::Assign { p }),
        1 => (0..PARTITIONS, 1i64..4).prop_map(|(p, by)| Op::Back { p, by }),
        2 => any::<bool>().prop_map(|ack| Op::Commit { ack }),
    ]
}

fn mode() -> impl Strategy<Value = OrderingMode> {
    prop_oneof![
        Just(OrderingMode::Unordered),
        Just(OrderingMode::Key),
        Just(OrderingMode::Partition)
    ]
}

/// The owners, wired as the engine wires them, and the model beside them.
struct Sim {
    mode: OrderingMode,
    concurrency: usize,
    parts: Partitions,
    waiting: Schedule,
    delayed: Retries,
    plan: CommitPlan,
    stats: Stats,
    /// For a batch handler: the most messages in one call.
    batch: Option<usize>,
    /// Handlers running (started, not ended), of any assignment, each with
    /// the call it belongs to (a batch's messages share one).
    running: Vec<(MessageTag, Message, u64)>,
    /// The last call's number.
    calls: u64,
    // The model.
    /// Where each assigned partition reads next, and its assignment.
    reading: BTreeMap<i32, (i64, u64)>,
    /// Offsets handled (in any assignment): what a commit may pass.
    handled: BTreeSet<(i32, i64)>,
    /// What was committed of each partition: offset and metadata.
    durable: BTreeMap<i32, (i64, Option<String>)>,
    /// The last position asked for in each assignment.
    asked: HashMap<u64, i64>,
    /// Each assignment's stop.
    stopped: HashMap<u64, i64>,
    /// Each (partition, key, assignment)'s starts: the offset and its call.
    lane_starts: HashMap<(i32, i64, u64), Vec<(i64, u64)>>,
    /// Positions asked for whose commit failed: the committer tries them
    /// again (with the next commit), for their assignment only.
    unacked: Vec<Wanted>,
}

fn key_of(offset: i64) -> i64 {
    offset % KEYS
}

impl Sim {
    fn new(mode: OrderingMode, concurrency: usize, metadata: bool, batch: Option<usize>) -> Self {
        let mut parts = Partitions::default();
        parts.topic("t");
        let mut sim = Sim {
            mode,
            concurrency,
            parts,
            waiting: Schedule::new(mode),
            delayed: Retries::default(),
            plan: CommitPlan::new(usize::MAX, std::time::Duration::from_secs(3600), metadata),
            stats: Stats::default(),
            batch,
            running: Vec::new(),
            calls: 0,
            reading: BTreeMap::new(),
            handled: BTreeSet::new(),
            durable: BTreeMap::new(),
            asked: HashMap::new(),
            stopped: HashMap::new(),
            lane_starts: HashMap::new(),
            unacked: Vec::new(),
        };
        for p in 0..PARTITIONS {
            sim.assign(p);
        }
        sim
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Fetch { p, n } => {
                for _ in 0..n {
                    self.fetch(p)?;
                }
            }
            Op::Start => self.start()?,
            Op::Finish { i } => self.end(i, |sim, tag, msg| sim.finish(tag, msg)),
            Op::Fail { i, retry } => self.end(i, |sim, tag, msg| sim.fail(tag, msg, retry)),
            Op::Revoke { p, lost } => self.revoke(p, lost)?,
            Op::Assign { p } => self.assign(p),
            Op::Back { p, by } => {
                if let Some((next, _)) = self.reading.get_mut(&p) {
                    *next = (*next - by).max(0);
                }
            }
            Op::Commit { ack } => {
                let wanted = self.plan.due(true, &mut self.parts, &self.stats).unwrap_or_default();
                self.commit(wanted, ack)?;
            }
        }
        self.check()
    }

    /// Reads the next record of partition `p`, as `Engine::enqueue` does.
    fn fetch(&mut self, p: i32) -> Result<(), TestCaseError> {
        let Some(&(offset, _)) = self.reading.get(&p) else {
            return Ok(());
        };
        // As `fill`: a stopped partition is not read.
        if self.parts.read_window(0, p).is_none() {
            return Ok(());
        }
        let msg = Message::new("t", p, offset).with_key(key_of(offset).to_string());
        let epoch = match self.parts.read(0, p, offset, 0) {
            Read::Gone | Read::Seek(_) => return Err(TestCaseError::fail("an assigned partition reads")),
            Read::Reread(from) => {
                // The seek there: what comes next is from there.
                let epoch = self.parts.epoch(0, p).unwrap_or_default();
                self.reading.insert(p, (from, epoch));
                return Ok(());
            }
            Read::Back { reread_from } => {
                self.waiting.drop_partition(0, p, i64::MIN);
                self.delayed.drop_partition(0, p, i64::MIN);
                self.parts.restart(0, p);
                let epoch = self.parts.epoch(0, p).unwrap_or_default();
                if let Some(from) = reread_from {
                    self.parts.resume_at(0, p, from);
                    self.reading.insert(p, (from, epoch));
                    return Ok(());
                }
                self.parts
                    .read_again(0, p, offset, 0)
                    .ok_or_else(|| TestCaseError::fail("restarted"))?
            }
            Read::Take { epoch, done_before, .. } => {
                if done_before {
                    prop_assert!(
                        self.handled.contains(&(p, offset)),
                        "{p}@{offset} was skipped as finished before, but it never was"
                    );
                    self.plan.finished();
                    self.reading.insert(p, (offset + 1, epoch));
                    return Ok(());
                }
                epoch
            }
        };
        self.reading.insert(p, (offset + 1, epoch));
        let tag = MessageTag {
            topic: 0,
            partition: p,
            epoch,
            lane: None,
        };
        self.waiting.push(tag, msg);
        Ok(())
    }

    /// Starts what may start, as `Engine::start_ready` does.
    fn start(&mut self) -> Result<(), TestCaseError> {
        let now = Instant::now();
        while let Some((tag, msg)) = self.delayed.pop_due(now) {
            if self.parts.may_retry(tag, msg.offset()) {
                self.waiting.retry(tag, msg);
            }
        }
        loop {
            let calls: BTreeSet<u64> = self.running.iter().map(|r| r.2).collect();
            let started = match self.batch {
                Some(max) if calls.len() < self.concurrency => self.waiting.pop_batch(max, usize::MAX, |_| false),
                None if self.parts.running() < self.concurrency => self.waiting.pop().map(|m| vec![m]),
                _ => None,
            };
            let Some(started) = started else {
                break;
            };
            self.calls += 1;
            for (tag, msg) in &started {
                self.check_start(*tag, msg.offset(), self.calls)?;
            }
            for (tag, msg) in started {
                self.parts.started(tag);
                self.running.push((tag, msg, self.calls));
            }
        }
        Ok(())
    }

    /// What must hold of a message that starts in call `call` (its call's
    /// other messages not yet counted as running).
    fn check_start(&mut self, tag: MessageTag, o: i64, call: u64) -> Result<(), TestCaseError> {
        let p = tag.partition;
        prop_assert_eq!(
            self.parts.epoch(0, p),
            Some(tag.epoch),
            "{}@{} started, but its assignment is gone",
            p,
            o
        );
        if let Some(&stop) = self.stopped.get(&tag.epoch) {
            prop_assert!(o < stop, "{}@{} started past its partition's stop at {}", p, o, stop);
        }
        let key = match self.mode {
            OrderingMode::Key => Some(key_of(o)),
            OrderingMode::Partition => Some(-1),
            OrderingMode::Unordered => None,
        };
        if let Some(k) = key {
            let same =
                |(t, m, _): &(MessageTag, Message, u64)| t.partition == p && (k == -1 || key_of(m.offset()) == k);
            prop_assert!(
                !self.running.iter().any(same),
                "{}@{} started while a message of its lane runs",
                p,
                o
            );
            // In offset order, but for a retry: it may come after the
            // later messages of a call it ran in before (its batch), and
            // no others.
            let starts = self.lane_starts.entry((p, k, tag.epoch)).or_default();
            let its_calls: BTreeSet<u64> = starts.iter().filter(|&&(l, _)| l == o).map(|&(_, c)| c).collect();
            let ahead = starts.iter().find(|&&(l, c)| l > o && !its_calls.contains(&c)).copied();
            prop_assert!(
                ahead.is_none(),
                "{}@{} started after {:?} (offset, call) of its lane",
                p,
                o,
                ahead
            );
            starts.push((o, call));
        }
        Ok(())
    }

    /// Ends the `i`-th running handler (modulo) with `how`; the other
    /// messages of its call (a batch's) finish with it, in offset order,
    /// as the events of one call come.
    fn end(&mut self, i: usize, how: impl FnOnce(&mut Self, MessageTag, Message)) {
        if self.running.is_empty() {
            return;
        }
        let (tag, msg, call) = self.running.remove(i % self.running.len());
        let mut mates: Vec<(MessageTag, Message)> = Vec::new();
        self.running.retain(|(t, m, c)| {
            let mate = *c == call;
            if mate {
                mates.push((*t, m.clone()));
            }
            !mate
        });
        let o = msg.offset();
        let (before, after): (Vec<_>, Vec<_>) = mates.into_iter().partition(|(_, m)| m.offset() < o);
        for (t, m) in before {
            self.finish(t, m);
        }
        how(self, tag, msg);
        for (t, m) in after {
            self.finish(t, m);
        }
    }

    /// As `Engine::on_event` with `Event::Done`.
    fn finish(&mut self, tag: MessageTag, msg: Message) {
        let o = msg.offset();
        self.handled.insert((tag.partition, o));
        if let Some(mut ended) = self.parts.ended(tag) {
            ended.finish(o);
            self.plan.finished();
        }
        self.waiting.finished(tag, o);
    }

    /// As `Engine::on_event` with `Event::Retry` (due now) or `Event::Stopped`.
    fn fail(&mut self, tag: MessageTag, msg: Message, retry: bool) {
        let o = msg.offset();
        let Some(mut ended) = self.parts.ended(tag) else {
            self.waiting.finished(tag, o);
            return;
        };
        if retry {
            if ended.may_retry(o) {
                self.waiting.idle(tag, o);
                self.delayed.push(Instant::now(), tag, msg);
            } else {
                self.waiting.finished(tag, o);
            }
            return;
        }
        ended.stop(o);
        let stop = self.stopped.entry(tag.epoch).or_insert(o);
        *stop = (*stop).min(o);
        self.waiting.finished(tag, o);
        self.waiting.drop_partition(0, tag.partition, o);
        self.delayed.drop_partition(0, tag.partition, o);
    }

    /// As `Engine::revoke`, without the wait for its handlers (they end
    /// later, in an assignment that is gone).
    fn revoke(&mut self, p: i32, lost: bool) -> Result<(), TestCaseError> {
        if !self.parts.revoke(0, p) {
            return Ok(());
        }
        self.waiting.drop_partition(0, p, i64::MIN);
        self.delayed.drop_partition(0, p, i64::MIN);
        if !lost {
            let wanted = self.plan.positions(&mut self.parts, &[(0, p)], &self.stats);
            self.commit(wanted, true)?;
        }
        self.parts.remove(0, p);
        self.reading.remove(&p);
        Ok(())
    }

    /// As `Engine::assign`: a new assignment of `p` reads from its last
    /// commit, and inherits the finished offsets its metadata lists.
    fn assign(&mut self, p: i32) {
        self.waiting.drop_partition(0, p, i64::MIN);
        self.delayed.drop_partition(0, p, i64::MIN);
        drop(self.parts.take_queue(0, p));
        let epoch = self.parts.assign(0, p, None);
        let (from, metadata) = self.durable.get(&p).cloned().unwrap_or((0, None));
        if let Some(set) = metadata.and_then(|m| finished::decode(m.as_bytes(), from).ok()) {
            self.parts.inherit(0, p, set, from);
        }
        self.reading.insert(p, (from, epoch));
    }

    /// Checks each position asked for, and commits it if `ack` (with what
    /// failed before: the committer tries it again with the next commit,
    /// for its assignment only); else keeps it for then.
    fn commit(&mut self, wanted: Vec<Wanted>, ack: bool) -> Result<(), TestCaseError> {
        for w in &wanted {
            let p = w.key.partition;
            let unhandled = (0..w.offset).find(|&o| !self.handled.contains(&(p, o)));
            prop_assert!(
                unhandled.is_none(),
                "position {} of partition {} passes {:?}, never handled",
                w.offset,
                p,
                unhandled
            );
            let before = self.asked.insert(w.epoch, w.offset);
            prop_assert!(
                before.is_none_or(|b| b <= w.offset),
                "partition {}'s position went back from {:?} to {} in one assignment",
                p,
                before,
                w.offset
            );
            if let Some(text) = &w.metadata {
                let listed = finished::decode(text.as_bytes(), w.offset)
                    .map_err(|e| TestCaseError::fail(format!("its own metadata is {e}")))?;
                for &(s, e) in listed.ranges() {
                    for o in s..e {
                        prop_assert!(
                            self.handled.contains(&(p, o)),
                            "{}@{} listed finished, never handled",
                            p,
                            o
                        );
                    }
                }
            }
        }
        self.unacked.extend(wanted);
        if ack {
            for w in std::mem::take(&mut self.unacked) {
                if self.parts.epoch(0, w.key.partition) == Some(w.epoch) {
                    self.parts.committed(&w.key, w.epoch, w.offset);
                    self.durable.insert(w.key.partition, (w.offset, w.metadata));
                }
            }
        }
        Ok(())
    }

    /// The counters against the model.
    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.parts.running(), self.running.len());
        let live = self
            .running
            .iter()
            .filter(|(t, _, _)| self.parts.epoch(0, t.partition) == Some(t.epoch))
            .count();
        prop_assert_eq!(self.parts.in_flight(&self.parts.all()), live);
        Ok(())
    }
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #[test]
    fn the_owners_keep_every_promise_against_the_model(
        mode in mode(),
        concurrency in 1usize..5,
        metadata in any::<bool>(),
        batch in proptest::option::of(1usize..5),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut sim = Sim::new(mode, concurrency, metadata, batch);
        for op in &ops {
            sim.step(op)?;
        }
        // Everything that can run runs to its end (retries are due at once),
        // and a last commit passes nothing unhandled.
        loop {
            sim.start()?;
            if sim.running.is_empty() {
                break;
            }
            while !sim.running.is_empty() {
                sim.end(0, |sim, tag, msg| sim.finish(tag, msg));
            }
        }
        let wanted = sim.plan.due(true, &mut sim.parts, &sim.stats).unwrap_or_default();
        sim.commit(wanted, true)?;
        // Nothing read is left behind: each partition that is not stopped has
        // committed everything it read (a retry that never came back, a lane
        // never freed, would hold it).
        for (&p, &(_, epoch)) in &sim.reading {
            if !sim.stopped.contains_key(&epoch) {
                prop_assert_eq!(sim.parts.window(0, p), Some(0), "partition {} left something behind", p);
            }
        }
    }
}

//! Dispatch: a message the schedule releases starts on a worker, or (where
//! a subscriber opts in with `first_poll`) has its first poll on the poll
//! thread and is handed over to a worker if it does not end there.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc::UnboundedSender;

use super::complete::{describe_error, drop_guarded, Concluded, DeadLetter, Ending, HandlerEnv};
use super::event::{Event, MessageTag};
use super::inline::{FirstPollEnd, Handover, Inline};
use super::worker::{work, Start};
use crate::handler::{Handler, Outcome};
use crate::message::Message;
use crate::policy::OnError;
use crate::stats::Stats;
use crate::subscriber::FirstPoll;

/// What beginning a handler on the poll thread came to.
pub(super) enum Begun {
    /// It ended on its first poll.
    Ended(Event),
    /// A worker takes it on from here.
    HandOver(Start),
}

/// Hands started messages to a few long-lived worker tasks, one per tokio
/// worker thread, instead of spawning a task per message: a worker drives
/// its handlers as one set of futures and reports their ends in batches, so
/// the poll thread pays for a channel send per turn, not a task per message.
///
/// By default ([`FirstPoll::Worker`]) user code runs only there, inside a
/// tokio task. Where the subscriber opts in (`PollThread`, `Auto`), the poll
/// thread calls a handler and polls its future once itself: one that ends
/// costs no hand-over; one that has to wait goes to a worker as it is, with
/// a waker that forwards to the worker's; one that fails or panics there is
/// not judged by it (the poll thread is not a task: `tokio::task::id()`, or
/// a runtime shutting down, fails there and not on a worker) and runs again
/// from the start on a worker, uncounted. [`Inline`] watches how first polls
/// go (for `Auto`), and the poll loop never begins one inside a rebalance
/// callback.
///
/// The poll thread decides what may start (the concurrency bound, ordering,
/// retries); a worker only runs what it is given. Handlers on one worker
/// share its thread, so a handler that computes for long without awaiting
/// delays the others on that worker: CPU-heavy work belongs in
/// `tokio::task::spawn_blocking`, as everywhere in tokio.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub(super) shared: Arc<HandlerEnv>,
    pub(super) workers: Vec<UnboundedSender<(u64, Vec<Start>)>>,
    /// Started this turn, per worker; sent by [`Dispatcher::flush`].
    pub(super) pending: Vec<Vec<Start>>,
    /// The number of the hand-over `pending` makes (see
    /// [`Admission`](super::worker::Admission)).
    pub(super) seq: u64,
    /// The worker that takes the next message.
    pub(super) next: usize,
    /// Messages it has taken since its turn began.
    pub(super) in_turn: usize,
    /// Messages one worker takes in a row: the concurrency's share of
    /// each worker (see [`Dispatcher::hand_over`]).
    pub(super) run: usize,
    pub(super) inline: Inline,
    /// The waker of the next first poll here (made anew only when a future
    /// keeps the previous one).
    pub(super) handover: Arc<Handover>,
    /// A first poll here has failed before (its warning is given once).
    pub(super) rerun_warned: bool,
}

impl Dispatcher {
    /// Spawns the workers (one per tokio worker thread, at most
    /// `concurrency`) on the shared runtime.
    pub(crate) fn new(shared: HandlerEnv, concurrency: usize, first_poll: FirstPoll) -> Self {
        let shared = Arc::new(shared);
        let n = shared.runtime.metrics().num_workers().clamp(1, concurrency.max(1));
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                shared.runtime.spawn(work(shared.clone(), rx));
                tx
            })
            .collect();
        Self {
            shared,
            pending: workers.iter().map(|_| Vec::new()).collect(),
            workers,
            seq: 1,
            next: 0,
            in_turn: 0,
            run: concurrency.max(1).div_ceil(n),
            inline: Inline::new(first_poll),
            handover: Arc::default(),
            rerun_warned: false,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Where a `store = "sql"` subscriber records finished offsets.
    pub(crate) fn store(&self) -> Option<Arc<dyn crate::sql::Store>> {
        self.shared.store.clone()
    }

    /// The runtime the handlers run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }

    /// Starts handling one message. It reports exactly one event: returned
    /// here if the handler ended on its first poll on this thread, else sent
    /// by a worker once [`Dispatcher::flush`] has handed it over and it ends.
    /// `here` is false where user code must not run on this thread whatever
    /// the mode (inside a rebalance callback).
    pub(crate) fn start(&mut self, slot: MessageTag, msg: Message, here: bool) -> Option<Event> {
        self.shared.stats.dispatched.fetch_add(1, Ordering::Relaxed);
        // Beginning here admits this turn's hand-over (what went to the
        // workers before it, of its partition too); once shutdown has
        // closed admission it goes there, and does not begin either.
        let shared = &self.shared;
        if !here || !self.inline.on() || !shared.admission.admit(self.seq, || shared.context.is_shutting_down()) {
            self.hand_over(Start::Fresh(slot, msg));
            return None;
        }
        self.shared.stats.first_polls_here.fetch_add(1, Ordering::Relaxed);
        // Should kconc's own code around the first poll panic (the
        // handler's panics are caught inside), the message runs again on a
        // worker, like a first poll that failed.
        let again = msg.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.begin_here(slot, msg, &again))) {
            Ok(Begun::Ended(event)) => Some(event),
            Ok(Begun::HandOver(start)) => {
                self.hand_over(start);
                None
            }
            Err(_) => {
                tracing::error!(
                    subscriber = &*self.shared.subscriber,
                    partition = slot.partition,
                    offset = again.offset(),
                    "kconc panicked around a first poll on the poll thread; the message runs again on a worker"
                );
                self.inline.record(std::time::Duration::ZERO, FirstPollEnd::Failed);
                self.hand_over(Start::Fresh(slot, again));
                None
            }
        }
    }

    /// Starts a batch handler's call on `batch` (messages of one
    /// partition, in offset order) on a worker. It reports one
    /// [`Event::BatchEnded`] with an event for each message.
    pub(crate) fn start_batch(&mut self, batch: Vec<(MessageTag, Message)>) {
        self.shared
            .stats
            .dispatched
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.hand_over(Start::Batch(batch));
    }

    /// Hands what was started since the last flush to the workers, one send
    /// per worker that has something. Returns `false` if the workers are
    /// gone (the runtime has shut down): what was handed over is abandoned
    /// (left uncommitted) and nothing can run any more.
    pub(crate) fn flush(&mut self) -> bool {
        let mut alive = true;
        let mut sent = false;
        for (tx, batch) in self.workers.iter().zip(&mut self.pending) {
            if batch.is_empty() {
                continue;
            }
            sent = true;
            if let Err(unsent) = tx.send((self.seq, std::mem::replace(batch, self.shared.spare_starts.take()))) {
                alive = false;
                for start in unsent.0 .1 {
                    if let Start::Running(..) = start {
                        self.shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    let _ = self.shared.events.send(start.abandoned());
                }
            }
        }
        if sent {
            self.seq += 1;
        }
        // The next flush goes to the next worker.
        if self.in_turn > 0 {
            self.next = self.next.wrapping_add(1);
            self.in_turn = 0;
        }
        alive
    }

    /// The subscriber's `on_error` step.
    pub(crate) fn on_error(&self) -> &OnError {
        &self.shared.policy.on_error
    }

    /// Hands a dead letter for `msg` (which failed with `error`) to a
    /// worker; its event comes back as a handler's would. For records
    /// that never reached a handler (unreadable ones).
    pub(crate) fn dead_letter(&mut self, slot: MessageTag, msg: Message, error: String) {
        let end = Ending {
            slot,
            topic: msg.topic_name(),
            partition: msg.partition(),
            offset: msg.offset(),
            attempt: msg.attempt(),
            copy: None,
        };
        self.hand_over(Start::DeadLetter(Box::new(DeadLetter {
            end,
            copy: msg,
            error,
            what: "unreadable records",
        })));
    }

    /// Ends the workers now: the handlers still running are dropped (their
    /// messages stay uncommitted). For the end of a shutdown's drain.
    pub(crate) fn abort(&self) {
        self.shared.abort.cancel();
    }

    /// Queues `start` for a worker. A worker takes up to its share of the
    /// concurrency in a row before the next worker's turn, and each flush
    /// begins a new turn: a turn's few messages wake one worker thread, not
    /// every one, while a full turn is still spread evenly over all (so
    /// handlers that block their thread still run side by side).
    pub(super) fn hand_over(&mut self, start: Start) {
        let n = self.pending.len();
        if let Some(batch) = self.pending.get_mut(self.next % n.max(1)) {
            batch.push(start);
        }
        self.in_turn += 1;
        if self.in_turn >= self.run {
            self.next = self.next.wrapping_add(1);
            self.in_turn = 0;
        }
    }

    /// Calls the handler here and polls its future once. Returns the event
    /// if it ended well, or what a worker takes up: the future that waits,
    /// or the message again (from the start) when it failed here.
    /// `again` is the message as it was, for a run on a worker should this
    /// one fail.
    pub(super) fn begin_here(&mut self, slot: MessageTag, msg: Message, again: &Message) -> Begun {
        let shared = &*self.shared;
        // This thread's spare boxes, as on a worker: one whose future waits
        // goes to the worker with it.
        let mut fut = super::worker::spare_box();
        let (mut call, begun) = shared.begin(slot, msg, &mut fut);
        let failure = match begun {
            Ok(()) => {
                let waker = std::task::Waker::from(self.handover.clone());
                let polled = {
                    let _in_span = call.span.enter();
                    Handler::poll(&mut fut, &mut std::task::Context::from_waker(&waker))
                };
                drop(waker);
                let took = call.started.elapsed();
                match polled {
                    Poll::Pending => {
                        self.inline.record(took, FirstPollEnd::Waited);
                        // A future that kept the waker takes it along; the
                        // next first poll gets a new one.
                        let kept = (Arc::strong_count(&self.handover) > 1).then(|| std::mem::take(&mut self.handover));
                        return Begun::HandOver(Start::Running(call, fut, kept));
                    }
                    Poll::Ready(Outcome::Ok) => {
                        self.inline.record(took, FirstPollEnd::Ended);
                        super::worker::recycle(fut, true);
                        return match shared.conclude(&mut call.end, &call.span, Outcome::Ok, took) {
                            Concluded::Event(event) => Begun::Ended(event),
                            Concluded::DeadLetter(dead) => Begun::HandOver(Start::DeadLetter(dead)),
                        };
                    }
                    Poll::Ready(failed) => {
                        self.inline.record(took, FirstPollEnd::Failed);
                        drop_guarded(fut);
                        failed
                    }
                }
            }
            Err(failed) => {
                self.inline.record(call.started.elapsed(), FirstPollEnd::Failed);
                drop_guarded(fut);
                failed
            }
        };
        shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.stats.first_polls_rerun.fetch_add(1, Ordering::Relaxed);
        let error = describe_outcome(failure);
        if std::mem::replace(&mut self.rerun_warned, true) {
            tracing::debug!(
                subscriber = &*shared.subscriber,
                topic = &*call.end.topic,
                partition = slot.partition,
                offset = call.end.offset,
                error,
                "handler failed on its first poll on the poll thread; it runs again on a worker"
            );
        } else {
            tracing::warn!(
                subscriber = &*shared.subscriber,
                topic = &*call.end.topic,
                partition = slot.partition,
                offset = call.end.offset,
                error,
                "handler failed on its first poll on the poll thread; it runs again on a worker, uncounted \
                 (the poll thread is not a tokio task: code that needs one should not use first_poll = poll_thread \
                 or auto); further such reruns are logged at debug level"
            );
        }
        Begun::HandOver(Start::Fresh(slot, again.clone()))
    }
}

/// The error text of a failed outcome (for a log line), computed where a
/// panic of the error's own code cannot escape.
pub(super) fn describe_outcome(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok => String::new(),
        Outcome::Panicked(text) => format!("handler panicked: {text}"),
        Outcome::Failed(error) => describe_error(error).text,
    }
}

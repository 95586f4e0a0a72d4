//! Workers: a few tokio tasks per subscriber, each driving the handlers'
//! futures it was given (and their dead letters) to their end, and
//! reporting each message's event back to the poll loop.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc::UnboundedReceiver;

use super::complete::{drop_guarded, Call, Concluded, DeadLetter, HandlerEnv, HandlerTimedOut};
use super::event::{Event, MessageTag};
use super::inline::Handover;
use super::places::Places;
use crate::handler::{FutureSlot, Handler, Outcome};
use crate::message::Message;
use crate::stats::unix_ms;

/// Where a worker takes a message up.
pub(crate) enum Start {
    /// From the start.
    Fresh(MessageTag, Message),
    /// The poll thread called the handler and its future waits: the worker
    /// polls it on (with its own waker) until it ends. The waker of that
    /// first poll, if the future kept it, forwards to the worker's.
    Running(Call, FutureSlot, Option<Arc<Handover>>),
    /// The handler failed its last attempt and the policy dead-letters it:
    /// the worker produces the dead letter.
    DeadLetter(Box<DeadLetter>),
    /// A batch handler's call on these messages (of one partition, in
    /// offset order), from the start.
    Batch(Vec<(MessageTag, Message)>),
}

impl Start {
    /// The message's slot and offset (a batch's first message's).
    pub(super) fn slot_offset(&self) -> (MessageTag, i64) {
        match self {
            Self::Fresh(slot, msg) => (*slot, msg.offset()),
            Self::Running(call, ..) => (call.end.slot, call.end.offset),
            Self::DeadLetter(dead) => (dead.end.slot, dead.end.offset),
            Self::Batch(batch) => batch
                .first()
                .map_or((MessageTag::default(), -1), |(slot, msg)| (*slot, msg.offset())),
        }
    }

    /// Its event when it cannot run (the runtime is gone): abandoned.
    pub(super) fn abandoned(&self) -> Event {
        match self {
            Self::Batch(batch) => super::batches::abandoned(batch),
            _ => {
                let (slot, offset) = self.slot_offset();
                Event::Abandoned(slot, offset)
            }
        }
    }
}

/// At most this many boxes of ended calls are kept per thread.
const SPARE_BOXES: usize = 1024;

thread_local! {
    /// The boxes of ended calls' futures (of every subscriber whose workers
    /// run on this thread), for the next calls (see [`FutureSlot`]). Only
    /// a future that ended is kept: it holds nothing more.
    static SPARE: std::cell::RefCell<Vec<FutureSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A box for a call's future: a spare one of this thread's, or a new one.
pub(super) fn spare_box() -> FutureSlot {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps the box of a call's future that ended, for the next call on this
/// thread; gives it back if there are enough.
fn keep_box(fut: FutureSlot) -> Result<(), FutureSlot> {
    let mut fut = Some(fut);
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BOXES {
            spare.extend(fut.take());
        }
    });
    fut.map_or(Ok(()), Err)
}

/// Keeps the box of a call that is over for the next call on this thread
/// if its future `ended` (then it holds nothing more); otherwise (it
/// panicked, or was cut off at the timeout), or with enough boxes kept,
/// drops it now, where a panic of its own drop cannot escape.
pub(super) fn recycle(fut: FutureSlot, ended: bool) {
    let rest = if ended { keep_box(fut).err() } else { Some(fut) };
    if let Some(fut) = rest {
        drop_guarded(fut);
    }
}

/// Which hand-overs may begin, decided once per hand-over (one flush of
/// the dispatcher, numbered from 1) by the first worker to reach its part
/// of it: before shutdown begins every one may; after it, none that was
/// not admitted before. A hand-over is admitted whole, and admitting one
/// admits every earlier one, so what begins of a partition is always the
/// run handed over first: a shutdown never leaves a message unstarted
/// below one that ran (where no commit metadata is kept, the one that ran
/// would be handled again after a restart). Without this, two workers
/// reaching the two parts of one hand-over on either side of the signal
/// began the later offsets and dropped the earlier one.
#[derive(Debug, Default)]
pub(crate) struct Admission(AtomicU64);

impl Admission {
    /// Set once shutdown has closed admission; the rest is the highest
    /// hand-over admitted.
    const CLOSED: u64 = 1 << 63;

    /// Whether hand-over `seq` may begin, with `shutting_down` read as
    /// late as possible: a closing decision is final, and an admission
    /// is never made after one (both are one compare-and-swap).
    pub(crate) fn admit(&self, seq: u64, shutting_down: impl Fn() -> bool) -> bool {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            let admitted = now & !Self::CLOSED;
            if seq <= admitted {
                return true;
            }
            if now & Self::CLOSED != 0 {
                return false;
            }
            let (next, admit) = if shutting_down() {
                (now | Self::CLOSED, false)
            } else {
                (seq, true)
            };
            match self
                .0
                .compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return admit,
                Err(current) => now = current,
            }
        }
    }
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Fresh(..) => "Fresh",
            Self::Running(..) => "Running",
            Self::DeadLetter(_) => "DeadLetter",
            Self::Batch(_) => "Batch",
        };
        let (slot, offset) = self.slot_offset();
        f.debug_tuple(name).field(&slot).field(&offset).finish()
    }
}

/// One worker: runs every message it is given concurrently and sends the
/// events of those that ended, batched per wake-up, until the dispatcher is
/// dropped and its handlers have ended.
pub(super) async fn work(shared: Arc<HandlerEnv>, mut inbox: UnboundedReceiver<(u64, Vec<Start>)>) {
    let shared = &*shared;
    // A drive that ended stays in its place and is made into the next.
    let mut running: Places<Drive<'_>> = Places::new();
    running.report_to(shared.stats.clone());
    let mut ended = Vec::new();
    let mut open = true;
    let aborted = shared.abort.cancelled();
    tokio::pin!(aborted);
    std::future::poll_fn(|cx| {
        if aborted.as_mut().poll(cx).is_ready() {
            running.clear();
            return Poll::Ready(());
        }
        running.register(cx);
        while open {
            match inbox.poll_recv(cx) {
                Poll::Ready(Some((seq, mut batch))) => {
                    // Handed over before shutdown began and not admitted
                    // then: what has not begun never does (it is read
                    // again after a restart).
                    let admitted = shared.admission.admit(seq, || shared.context.is_shutting_down());
                    // One clock reading for the batch: its messages begin now.
                    running.now_ms = unix_ms();
                    for mut start in batch.drain(..) {
                        if !admitted && matches!(start, Start::Fresh(..) | Start::Batch(_)) {
                            ended.push(start.abandoned());
                            continue;
                        }
                        let handover = match &mut start {
                            Start::Running(_, _, handover) => handover.take(),
                            _ => None,
                        };
                        let place = running.insert_with(|place| match place {
                            Some(drive) => drive.restart(start),
                            None => *place = Some(Drive::new(shared, start)),
                        });
                        if let (Some(handover), Some(waker)) = (handover, running.waker(place)) {
                            handover.connect(waker);
                        }
                    }
                    shared.spare_starts.put(batch);
                }
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        running.poll_woken(&mut ended);
        match ended.len() {
            0 => {}
            1 => {
                if let Some(event) = ended.pop() {
                    let _ = shared.events.send(event);
                }
            }
            _ => {
                // The poll loop keeps the receiver until shutdown has given
                // up on running handlers; a failed send means nobody waits.
                let _ = shared
                    .events
                    .send(Event::Batch(std::mem::replace(&mut ended, shared.spare_events.take())));
            }
        }
        if !open && running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// One message on a worker, from where its [`Start`] says to its event: a
/// plain state machine, not nested `async` layers. Its parts are fields of
/// their own (the message until its handler begins, the call while it
/// runs), each taken or set where it is used: a step moves no more than the
/// part it changes (moving the whole state at every step cost 7 calls to
/// `memcpy` per message). Should kconc's own code around the handler panic
/// (the handler's panics are caught inside), the message is concluded as
/// panicked under the error policy (without a retry), so its lane and slot
/// are freed and its offset is final.
pub(super) struct Drive<'a> {
    pub(super) shared: &'a HandlerEnv,
    /// The message's slot and offset, for a conclusion after such a panic.
    pub(super) slot: MessageTag,
    pub(super) offset: i64,
    pub(super) state: DriveState<'a>,
    /// The message, until its handler begins ([`DriveState::Fresh`]).
    pub(super) msg: Option<Message>,
    /// The handler's call while it runs ([`DriveState::Handler`]), and
    /// until its conclusion.
    pub(super) call: Option<Call>,
    /// The handler's future while it runs.
    pub(super) fut: FutureSlot,
    /// Ends the handler at `handler_timeout` (boxed: made only where a
    /// timeout is set).
    pub(super) deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

pub(super) enum DriveState<'a> {
    /// Not begun: the handler is called on the first poll (where a panic
    /// of kconc's own code is caught).
    Fresh,
    /// The handler runs.
    Handler,
    /// Producing the dead letter.
    DeadLetter(std::pin::Pin<Box<dyn Future<Output = Event> + Send + 'a>>),
    /// A batch handler's call, to its messages' conclusions (each
    /// message's slot and offset kept for a conclusion after a panic).
    Batch(
        Vec<(MessageTag, i64)>,
        std::pin::Pin<Box<dyn Future<Output = Event> + Send + 'a>>,
    ),
    /// Ended (its event returned), or between two states.
    Ended,
}

impl<'a> Drive<'a> {
    pub(super) fn new(shared: &'a HandlerEnv, start: Start) -> Self {
        let mut drive = Self {
            shared,
            slot: MessageTag::default(),
            offset: -1,
            state: DriveState::Ended,
            msg: None,
            call: None,
            fut: FutureSlot::default(),
            deadline: None,
        };
        drive.restart(start);
        drive
    }

    /// Makes an ended drive (kept in its place) the drive of `start`, in
    /// place: only the parts `start` brings are moved in. Its future's box
    /// is kept for the next call.
    pub(super) fn restart(&mut self, start: Start) {
        let (slot, offset) = start.slot_offset();
        self.slot = slot;
        self.offset = offset;
        match start {
            Start::Fresh(_, msg) => {
                self.msg = Some(msg);
                self.state = DriveState::Fresh;
            }
            Start::Running(call, fut, _) => {
                self.deadline = self.shared.deadline(call.started);
                self.call = Some(call);
                let kept = std::mem::replace(&mut self.fut, fut);
                if !kept.is_empty() {
                    recycle(kept, true);
                }
                self.state = DriveState::Handler;
            }
            Start::DeadLetter(dead) => self.state = DriveState::DeadLetter(self.shared.dead_letter_boxed(*dead)),
            Start::Batch(batch) => {
                let members = batch.iter().map(|(slot, msg)| (*slot, msg.offset())).collect();
                self.state = DriveState::Batch(members, self.shared.run_batch_boxed(batch));
            }
        }
    }

    pub(super) fn step(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        loop {
            let (outcome, took) = match &mut self.state {
                DriveState::Fresh => {
                    // Ended while kconc's code runs: a panic there is not
                    // one inside a call (see `Future::poll` below).
                    self.state = DriveState::Ended;
                    let Some(msg) = self.msg.take() else {
                        continue;
                    };
                    if self.fut.is_empty() {
                        self.fut = spare_box();
                    }
                    let (call, begun) = self.shared.begin_in(self.slot, msg, &mut self.fut, &mut self.call);
                    match begun {
                        Ok(()) => {
                            self.deadline = self.shared.deadline(call.started);
                            self.state = DriveState::Handler;
                            continue;
                        }
                        Err(outcome) => {
                            let took = call.started.elapsed();
                            recycle(std::mem::take(&mut self.fut), false);
                            (outcome, took)
                        }
                    }
                }
                DriveState::Handler => {
                    let Some(call) = self.call.as_mut() else {
                        self.state = DriveState::Ended;
                        continue;
                    };
                    let polled = {
                        let _in_span = call.span.enter();
                        if self.deadline.is_some() {
                            crate::reply::take_awaiting_ack();
                        }
                        Handler::poll(&mut self.fut, cx)
                    };
                    // Whether the future ended (Ok, Err or a panic caught
                    // in it) rather than being cut off at the timeout.
                    let (outcome, ended) = match polled {
                        Poll::Ready(outcome) => (outcome, true),
                        Poll::Pending => {
                            let Some(deadline) = self.deadline.as_mut() else {
                                return Poll::Pending;
                            };
                            std::task::ready!(deadline.as_mut().poll(cx));
                            let after = self.shared.handler_timeout.unwrap_or_default();
                            let unacknowledged_reply = crate::reply::take_awaiting_ack()
                                .then(|| self.shared.context.reply_topic().map(str::to_owned))
                                .flatten();
                            let timed_out = Outcome::Failed(Box::new(HandlerTimedOut {
                                after,
                                unacknowledged_reply,
                            }));
                            (timed_out, false)
                        }
                    };
                    self.deadline = None;
                    self.state = DriveState::Ended;
                    let took = call.started.elapsed();
                    // A future that ended holds nothing more: its box is
                    // kept here for the next call. One that panicked or was
                    // cut off at the timeout is dropped now, where a panic
                    // of its own drop cannot escape.
                    if !ended || matches!(outcome, Outcome::Panicked(_)) {
                        drop_guarded(std::mem::take(&mut self.fut));
                    }
                    (outcome, took)
                }
                DriveState::DeadLetter(fut) | DriveState::Batch(_, fut) => {
                    let event = std::task::ready!(fut.as_mut().poll(cx));
                    self.state = DriveState::Ended;
                    return Poll::Ready(event);
                }
                // Not polled again once ended (the worker frees its place).
                DriveState::Ended => return Poll::Ready(Event::Abandoned(self.slot, self.offset)),
            };
            let Some(call) = self.call.as_mut() else {
                return Poll::Ready(Event::Abandoned(self.slot, self.offset));
            };
            // The call's span ends with it, after its conclusion.
            let concluded = self.shared.conclude(&mut call.end, &call.span, outcome, took);
            self.call = None;
            match concluded {
                Concluded::Event(event) => return Poll::Ready(event),
                Concluded::DeadLetter(dead) => {
                    self.state = DriveState::DeadLetter(self.shared.dead_letter_boxed(*dead));
                }
            }
        }
    }
}

impl Future for Drive<'_> {
    type Output = Event;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.step(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!(
                    subscriber = &*this.shared.subscriber,
                    partition = this.slot.partition,
                    offset = this.offset,
                    "kconc panicked around a handler call; the message is concluded as panicked"
                );
                let state = std::mem::replace(&mut this.state, DriveState::Ended);
                let in_call = matches!(state, DriveState::Handler);
                drop_guarded((this.msg.take(), this.call.take(), std::mem::take(&mut this.fut)));
                if let DriveState::Batch(members, fut) = state {
                    drop_guarded(fut);
                    let events = members
                        .into_iter()
                        .map(|(slot, offset)| this.shared.conclude_after_panic(slot, offset, false))
                        .collect();
                    return Poll::Ready(Event::BatchEnded(events));
                }
                drop_guarded(state);
                Poll::Ready(this.shared.conclude_after_panic(this.slot, this.offset, in_call))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn admission_is_whole_in_order_and_closes_for_good() {
        let a = Admission::default();
        assert!(a.admit(2, || false), "before shutdown every hand-over is admitted");
        // Shutdown begins: what was admitted (and everything before it)
        // still begins; nothing later does, even if asked with shutdown
        // read as not yet begun (a worker that read it just before).
        assert!(a.admit(1, || true));
        assert!(a.admit(2, || true));
        assert!(!a.admit(3, || true));
        assert!(!a.admit(3, || false), "closed is final");
        assert!(a.admit(2, || false));
    }

    #[test]
    fn a_hand_over_begun_anywhere_admits_every_earlier_one() {
        let a = Admission::default();
        // The worker with hand-over 5's part reaches it before the signal;
        // the one with hand-over 4's part only after: 4 must still begin.
        assert!(a.admit(5, || false));
        assert!(a.admit(4, || true));
        assert!(!a.admit(6, || true));
    }
}

//! Dispatch: runs the handler for each message on a few worker tasks,
//! catches its errors and panics, and reports back to the poll loop that it
//! finished.
//! The poll loop decides when a message may start (its concurrency bound).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::context::Context;
use crate::event::{Completion, Event, PartitionSlot};
use crate::handler::{BoxError, Handler, HandlerFuture, Outcome};
use crate::message::Message;
use crate::policy::{self, ErrorPolicy, OnError};
use crate::stats::{unix_ms, Stats};
use crate::subscriber::FirstPoll;

/// What every handler of one subscriber shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) subscriber: Arc<str>,
    pub(crate) handler: Handler,
    pub(crate) context: Context,
    pub(crate) events: Sender<Event>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) policy: ErrorPolicy,
    /// A handler running longer is dropped and its message fails.
    pub(crate) handler_timeout: Option<std::time::Duration>,
    /// Given at the end of a shutdown's drain: the workers drop the
    /// handlers still running and end.
    pub(crate) abort: tokio_util::sync::CancellationToken,
}

/// Where a worker takes a message up.
pub(crate) enum Start {
    /// From the start.
    Fresh(PartitionSlot, Message),
    /// The poll thread called the handler and its future waits: the worker
    /// polls it on (with its own waker) until it ends. The waker of that
    /// first poll, if the future kept it, forwards to the worker's.
    Running(Call, HandlerFuture, Option<Arc<Handover>>),
    /// The handler failed its last attempt and the policy dead-letters it:
    /// the worker produces the dead letter.
    DeadLetter(Box<DeadLetter>),
}

impl Start {
    /// The message's slot and offset.
    fn slot_offset(&self) -> (PartitionSlot, i64) {
        match self {
            Self::Fresh(slot, msg) => (*slot, msg.offset()),
            Self::Running(call, ..) => (call.end.slot, call.end.offset),
            Self::DeadLetter(dead) => (dead.end.slot, dead.end.offset),
        }
    }
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Fresh(..) => "Fresh",
            Self::Running(..) => "Running",
            Self::DeadLetter(_) => "DeadLetter",
        };
        let (slot, offset) = self.slot_offset();
        f.debug_tuple(name).field(&slot).field(&offset).finish()
    }
}

/// A message to dead-letter: where it came from (with the message as it
/// was) and the last attempt's error.
pub(crate) struct DeadLetter {
    end: Ending,
    copy: Message,
    error: String,
    /// What failed, for the log (see [`Described::what`]).
    what: &'static str,
}

/// What beginning a handler on the poll thread came to.
enum Begun {
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
    shared: Arc<Shared>,
    workers: Vec<UnboundedSender<Vec<Start>>>,
    /// Started this turn, per worker; sent by [`Dispatcher::flush`].
    pending: Vec<Vec<Start>>,
    next: usize,
    inline: Inline,
    /// The waker of the next first poll here (made anew only when a future
    /// keeps the previous one).
    handover: Arc<Handover>,
    /// A first poll here has failed before (its warning is given once).
    rerun_warned: bool,
}

impl Dispatcher {
    /// Spawns the workers (one per tokio worker thread, at most
    /// `concurrency`) on the shared runtime.
    pub(crate) fn new(shared: Shared, concurrency: usize, first_poll: FirstPoll) -> Self {
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
            next: 0,
            inline: Inline::new(first_poll),
            handover: Arc::default(),
            rerun_warned: false,
        }
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Starts handling one message. It reports exactly one event: returned
    /// here if the handler ended on its first poll on this thread, else sent
    /// by a worker once [`Dispatcher::flush`] has handed it over and it ends.
    /// `here` is false where user code must not run on this thread whatever
    /// the mode (inside a rebalance callback).
    pub(crate) fn start(&mut self, slot: PartitionSlot, msg: Message, here: bool) -> Option<Event> {
        self.shared.stats.dispatched.fetch_add(1, Ordering::Relaxed);
        if !here || !self.inline.on() {
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

    /// Hands what was started since the last flush to the workers, one send
    /// per worker that has something. Returns `false` if the workers are
    /// gone (the runtime has shut down): what was handed over is abandoned
    /// (left uncommitted) and nothing can run any more.
    pub(crate) fn flush(&mut self) -> bool {
        let mut alive = true;
        for (tx, batch) in self.workers.iter().zip(&mut self.pending) {
            if batch.is_empty() {
                continue;
            }
            if let Err(unsent) = tx.send(std::mem::take(batch)) {
                alive = false;
                for start in unsent.0 {
                    if let Start::Running(..) = start {
                        self.shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    let (slot, offset) = start.slot_offset();
                    let _ = self.shared.events.send(Event::Abandoned(slot, offset));
                }
            }
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
    pub(crate) fn dead_letter(&mut self, slot: PartitionSlot, msg: Message, error: String) {
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

    fn hand_over(&mut self, start: Start) {
        let n = self.pending.len();
        if let Some(batch) = self.pending.get_mut(self.next % n.max(1)) {
            batch.push(start);
        }
        self.next = self.next.wrapping_add(1);
    }

    /// Calls the handler here and polls its future once. Returns the event
    /// if it ended well, or what a worker takes up: the future that waits,
    /// or the message again (from the start) when it failed here.
    /// `again` is the message as it was, for a run on a worker should this
    /// one fail.
    fn begin_here(&mut self, slot: PartitionSlot, msg: Message, again: &Message) -> Begun {
        let shared = &*self.shared;
        let (call, begun) = shared.begin(slot, msg);
        let failure = match begun {
            Ok(mut fut) => {
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
                        drop_guarded(fut);
                        return match shared.conclude(call.end, Outcome::Ok, took) {
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
fn describe_outcome(outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok => String::new(),
        Outcome::Panicked(text) => format!("handler panicked: {text}"),
        Outcome::Failed(error) => describe_error(error).text,
    }
}

/// A failed message's error, as the log and the dead letter tell it.
struct Described {
    /// The error and its causes (its `source()` chain), `: `-joined.
    text: String,
    /// Whether the policy may retry it.
    retryable: bool,
    /// What failed, for the log: the handler, or the decoding of the
    /// message before it (then the handler did not run).
    what: &'static str,
}

/// A handler's error as text (with its causes, as anyhow's `{:#}` shows
/// them; a cause whose text already ends the text so far is not repeated)
/// and whether the policy may retry it. Both run the error's own code
/// (`Display`, `source()`), which must not take kconc down: should it
/// panic, the error reads as such and may be retried.
fn describe_error(error: BoxError) -> Described {
    let described = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let text = policy::error_chain(&*error);
        let what = if error.is::<crate::message::Undecodable>() {
            "could not decode the message (its handler did not run)"
        } else {
            "handler failed"
        };
        Described {
            text,
            retryable: policy::is_retryable(&*error),
            what,
        }
    }))
    .unwrap_or_else(|_| Described {
        text: "the handler's error panicked while being formatted".to_owned(),
        retryable: true,
        what: "handler failed",
    });
    drop_guarded(error);
    described
}

/// Drops a value of the user's (a handler's future or error) where a panic
/// in its `Drop` cannot escape: the outcome it belonged to stands.
fn drop_guarded<T>(value: T) {
    run_guarded(move || drop(value));
}

/// Runs `f` (which drops something of the user's) where a panic cannot
/// escape.
fn run_guarded(f: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::warn!("a handler's future or error panicked while being dropped; the outcome stands");
    }
}

/// The waker of a first poll on the poll thread. Until a worker takes the
/// future up, a wake is remembered; afterwards it goes to the worker's own
/// waker for the future's place, so a future that registered only this
/// waker (once, on its first poll) is still woken on its worker.
#[derive(Debug, Default)]
pub(crate) struct Handover(Mutex<HandoverState>);

#[derive(Debug, Default)]
struct HandoverState {
    target: Option<std::task::Waker>,
    woken: bool,
}

impl Handover {
    /// From now on, wakes go to `target` (and one that came before goes now).
    fn connect(&self, target: &std::task::Waker) {
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.target = Some(target.clone());
        if std::mem::take(&mut state.woken) {
            target.wake_by_ref();
        }
    }
}

impl std::task::Wake for Handover {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &state.target {
            Some(target) => target.wake_by_ref(),
            None => state.woken = true,
        }
    }
}

/// How a first poll on the poll thread went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstPollEnd {
    /// The handler ended well.
    Ended,
    /// It has to wait: a worker takes it on.
    Waited,
    /// It failed or panicked there (it runs again on a worker).
    Failed,
}

/// Decides whether the poll thread polls new handlers once itself (see
/// [`FirstPoll::Auto`] for the rule). When it does not, messages go
/// straight to the workers and it tries again after `backoff` messages, a
/// wait that doubles each time the try fails. So handlers that wait for
/// I/O, or compute, or fail there, run on the workers, and the poll thread,
/// which also serves rebalances, is held up by at most one handler's first
/// poll per try.
#[derive(Debug)]
struct Inline {
    mode: FirstPoll,
    on: bool,
    /// Messages left in this window (on) or until the next try (off).
    left: u32,
    waited: u32,
    spent: std::time::Duration,
    backoff: u32,
}

const INLINE_WINDOW: u32 = 64;
const INLINE_BUDGET: std::time::Duration = std::time::Duration::from_micros(20);
const INLINE_MAX: std::time::Duration = std::time::Duration::from_micros(500);
const FIRST_BACKOFF: u32 = 256;
const MAX_BACKOFF: u32 = 1 << 16;

impl Inline {
    fn new(mode: FirstPoll) -> Self {
        Self {
            mode,
            on: mode != FirstPoll::Worker,
            left: INLINE_WINDOW,
            waited: 0,
            spent: std::time::Duration::ZERO,
            backoff: FIRST_BACKOFF,
        }
    }

    /// Whether to begin the next message here; counts it when not.
    fn on(&mut self) -> bool {
        if self.on {
            return true;
        }
        if self.mode == FirstPoll::Auto {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                self.on = true;
                self.open_window();
            }
        }
        false
    }

    /// Starts counting a new window of first polls here.
    fn open_window(&mut self) {
        self.left = INLINE_WINDOW;
        self.waited = 0;
        self.spent = std::time::Duration::ZERO;
    }

    /// Records how a first poll here went.
    fn record(&mut self, took: std::time::Duration, end: FirstPollEnd) {
        if self.mode != FirstPoll::Auto {
            return;
        }
        self.spent += took;
        self.waited += u32::from(end == FirstPollEnd::Waited);
        if end == FirstPollEnd::Failed
            || took > INLINE_MAX
            || self.waited > INLINE_WINDOW / 2
            || self.spent > INLINE_BUDGET * INLINE_WINDOW
        {
            self.on = false;
            self.left = self.backoff;
            self.backoff = self.backoff.saturating_mul(2).min(MAX_BACKOFF);
            return;
        }
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.open_window();
            self.backoff = FIRST_BACKOFF;
        }
    }
}

/// One worker: runs every message it is given concurrently and sends the
/// events of those that ended, batched per wake-up, until the dispatcher is
/// dropped and its handlers have ended.
async fn work(shared: Arc<Shared>, mut inbox: UnboundedReceiver<Vec<Start>>) {
    let shared = &*shared;
    let mut running = Slots::new();
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
                Poll::Ready(Some(batch)) => {
                    // One clock reading for the batch: its messages begin now.
                    running.now_ms = unix_ms();
                    for mut start in batch {
                        let handover = match &mut start {
                            Start::Running(_, _, handover) => handover.take(),
                            _ => None,
                        };
                        let place = running.insert(Drive::new(shared, start));
                        if let (Some(handover), Some(waker)) = (handover, running.waker(place)) {
                            handover.connect(waker);
                        }
                    }
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
                let _ = shared.events.send(Event::Batch(std::mem::take(&mut ended)));
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

/// The handlers one worker runs: a set of futures polled only when woken,
/// like `FuturesUnordered`, but whose places (the pinned box a future lives
/// in, and its waker) are made once and reused by later messages, so
/// running a message allocates nothing here.
struct Slots<F> {
    slots: Vec<Slot<F>>,
    /// Places free for the next message.
    free: Vec<usize>,
    /// Places to poll now: new futures, and those woken.
    due: Vec<usize>,
    woken: Arc<Woken>,
    /// Where each place's start time is published (see
    /// [`Stats::running_since`]), if anywhere.
    stats: Option<Arc<Stats>>,
    /// The time stamped on the futures inserted next, in Unix milliseconds.
    now_ms: u64,
}

struct Slot<F> {
    future: std::pin::Pin<Box<Option<F>>>,
    wake: Arc<SlotWake>,
    waker: std::task::Waker,
    /// When its future began, in Unix milliseconds (0: free).
    since: Arc<AtomicU64>,
}

/// The places woken since the worker last looked, and the worker's waker.
#[derive(Default)]
struct Woken {
    places: Mutex<Vec<usize>>,
    worker: futures_util::task::AtomicWaker,
}

/// The waker of one place. `queued` keeps a place from being listed twice;
/// it is cleared just before each poll, so a wake during or after that poll
/// lists it again and none is lost. A wake meant for a place's previous
/// future only causes one spurious poll of the next.
struct SlotWake {
    place: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl std::task::Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.woken
                .places
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.place);
            self.woken.worker.wake();
        }
    }
}

impl<F: Future> Slots<F> {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            due: Vec::new(),
            woken: Arc::default(),
            stats: None,
            now_ms: 0,
        }
    }

    /// Publishes each place's start time in `stats`.
    fn report_to(&mut self, stats: Arc<Stats>) {
        self.stats = Some(stats);
    }

    /// Makes `cx` the waker to call when a future here is woken.
    fn register(&self, cx: &std::task::Context<'_>) {
        self.woken.worker.register(cx.waker());
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Adds a future, to be polled first by the next [`Slots::poll_woken`];
    /// returns its place.
    fn insert(&mut self, future: F) -> usize {
        let place = match self.free.pop() {
            Some(place) => place,
            None => {
                let place = self.slots.len();
                let wake = Arc::new(SlotWake {
                    place,
                    queued: AtomicBool::new(false),
                    woken: self.woken.clone(),
                });
                let since = Arc::new(AtomicU64::new(0));
                if let Some(list) = self.stats.as_ref().and_then(|s| s.running_since.lock().ok()).as_mut() {
                    list.push(since.clone());
                }
                self.slots.push(Slot {
                    future: Box::pin(None),
                    waker: std::task::Waker::from(wake.clone()),
                    wake,
                    since,
                });
                place
            }
        };
        if let Some(slot) = self.slots.get_mut(place) {
            slot.future.set(Some(future));
            slot.since.store(self.now_ms.max(1), Ordering::Relaxed);
        }
        self.due.push(place);
        place
    }

    /// Drops every future (where a panic in a `Drop` cannot escape).
    fn clear(&mut self) {
        for slot in &mut self.slots {
            let future = &mut slot.future;
            run_guarded(|| future.set(None));
            slot.since.store(0, Ordering::Relaxed);
        }
    }

    /// The waker of a place.
    fn waker(&self, place: usize) -> Option<&std::task::Waker> {
        self.slots.get(place).map(|slot| &slot.waker)
    }

    /// Polls the new futures and those woken since the last call; pushes
    /// the outputs of those that finished onto `ended`.
    fn poll_woken(&mut self, ended: &mut Vec<F::Output>) {
        self.due.append(
            &mut self
                .woken
                .places
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for place in self.due.drain(..) {
            let Some(slot) = self.slots.get_mut(place) else {
                continue;
            };
            slot.wake.queued.store(false, Ordering::SeqCst);
            let Some(future) = slot.future.as_mut().as_pin_mut() else {
                continue; // already finished: a late or repeated wake
            };
            if let Poll::Ready(out) = future.poll(&mut std::task::Context::from_waker(&slot.waker)) {
                slot.future.set(None);
                slot.since.store(0, Ordering::Relaxed);
                self.free.push(place);
                ended.push(out);
            }
        }
    }
}

/// One message on a worker, from where its [`Start`] says to its event: a
/// plain state machine, not nested `async` layers, so building it and
/// moving it into its place copies one small value. Should kconc's own
/// code around the handler panic (the handler's panics are caught inside),
/// the message is concluded as panicked under the error policy (without a
/// retry), so its lane and slot are freed and its offset is final.
struct Drive<'a> {
    shared: &'a Shared,
    /// The message's slot and offset, for a conclusion after such a panic.
    slot: PartitionSlot,
    offset: i64,
    state: DriveState<'a>,
    /// Ends the handler at `handler_timeout` (boxed: made only where a
    /// timeout is set).
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

// The handler state is the one every message is in; boxing it to even out
// the sizes would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum DriveState<'a> {
    /// Not begun: the handler is called on the first poll (where a panic
    /// of kconc's own code is caught).
    Fresh(PartitionSlot, Message),
    /// The handler runs.
    Handler(Call, HandlerFuture),
    /// Producing the dead letter.
    DeadLetter(std::pin::Pin<Box<dyn Future<Output = Event> + Send + 'a>>),
    /// Ended (its event returned).
    Ended,
}

impl<'a> Drive<'a> {
    fn new(shared: &'a Shared, start: Start) -> Self {
        let (slot, offset) = start.slot_offset();
        let state = match start {
            Start::Fresh(slot, msg) => DriveState::Fresh(slot, msg),
            Start::Running(call, fut, _) => DriveState::Handler(call, fut),
            Start::DeadLetter(dead) => DriveState::DeadLetter(shared.dead_letter_boxed(*dead)),
        };
        let mut drive = Self {
            shared,
            slot,
            offset,
            state,
            deadline: None,
        };
        if let DriveState::Handler(call, _) = &drive.state {
            drive.deadline = shared.deadline(call.started);
        }
        drive
    }

    fn step(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        loop {
            let (end, outcome, took) = match &mut self.state {
                DriveState::Fresh(..) => {
                    let DriveState::Fresh(slot, msg) = std::mem::replace(&mut self.state, DriveState::Ended) else {
                        continue;
                    };
                    // Handed over before shutdown began and reached only
                    // now: it never starts (it is read again after a restart).
                    if self.shared.context.is_shutting_down() {
                        return Poll::Ready(Event::Abandoned(slot, msg.offset()));
                    }
                    match self.shared.begin(slot, msg) {
                        (call, Ok(fut)) => {
                            self.deadline = self.shared.deadline(call.started);
                            self.state = DriveState::Handler(call, fut);
                            continue;
                        }
                        (call, Err(outcome)) => {
                            let took = call.started.elapsed();
                            (call.end, outcome, took)
                        }
                    }
                }
                DriveState::Handler(call, fut) => {
                    let polled = {
                        let _in_span = call.span.enter();
                        Handler::poll(fut, cx)
                    };
                    let outcome = match polled {
                        Poll::Ready(outcome) => outcome,
                        Poll::Pending => {
                            let Some(deadline) = self.deadline.as_mut() else {
                                return Poll::Pending;
                            };
                            std::task::ready!(deadline.as_mut().poll(cx));
                            let after = self.shared.handler_timeout.unwrap_or_default();
                            Outcome::Failed(Box::new(HandlerTimedOut { after }))
                        }
                    };
                    self.deadline = None;
                    let DriveState::Handler(call, fut) = std::mem::replace(&mut self.state, DriveState::Ended) else {
                        continue;
                    };
                    let took = call.started.elapsed();
                    drop(call.span);
                    drop_guarded(fut);
                    (call.end, outcome, took)
                }
                DriveState::DeadLetter(fut) => {
                    let event = std::task::ready!(fut.as_mut().poll(cx));
                    self.state = DriveState::Ended;
                    return Poll::Ready(event);
                }
                // Not polled again once ended (the worker frees its place).
                DriveState::Ended => return Poll::Ready(Event::Abandoned(self.slot, self.offset)),
            };
            match self.shared.conclude(end, outcome, took) {
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
                let in_call = matches!(state, DriveState::Handler(..));
                drop_guarded(state);
                Poll::Ready(this.shared.conclude_after_panic(this.slot, this.offset, in_call))
            }
        }
    }
}

/// One handler call in progress.
pub(crate) struct Call {
    end: Ending,
    span: tracing::Span,
    started: Instant,
}

/// What a message's conclusion needs to know.
struct Ending {
    slot: PartitionSlot,
    /// Kept for the log line of a failure; cloning the shared name is
    /// cheaper than formatting on every message.
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    attempt: u32,
    /// The message as it was, for a retry or a dead letter (when the policy
    /// may need one: the handler consumes the message). A clone shares the
    /// record: nothing is copied.
    copy: Option<Message>,
}

/// How a handler call ended, for the poll loop.
enum Concluded {
    Event(Event),
    /// Failed its last attempt and the policy dead-letters it: the produce
    /// comes first.
    DeadLetter(Box<DeadLetter>),
}

/// A handler ran longer than its subscriber's `handler_timeout` and was
/// dropped: its message failed with this error (retried if retries are
/// left, then the error policy).
#[derive(Debug, thiserror::Error)]
#[error("the handler ran longer than handler_timeout ({after:?}) and was cancelled")]
pub struct HandlerTimedOut {
    /// The `handler_timeout` it ran over.
    pub after: std::time::Duration,
}

impl Shared {
    /// The timer that ends a handler begun at `started`, if there is a
    /// `handler_timeout`.
    fn deadline(&self, started: Instant) -> Option<std::pin::Pin<Box<tokio::time::Sleep>>> {
        let timeout = self.handler_timeout?;
        Some(Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + timeout,
        ))))
    }

    /// Boxed: the dead-letter produce is rare and its future is large;
    /// inline, it would make every message's future (built and moved per
    /// message) several times bigger.
    fn dead_letter_boxed(&self, dead: DeadLetter) -> std::pin::Pin<Box<dyn Future<Output = Event> + Send + '_>> {
        Box::pin(async move {
            let DeadLetter { end, copy, error, what } = dead;
            match &self.policy.on_error {
                OnError::DeadLetter(dlq) => self.dead_letter(end.slot, dlq, &copy, &error, what).await,
                // Not reached: only a dead-letter policy concludes so.
                _ => Event::Stopped {
                    slot: end.slot,
                    offset: end.offset,
                    reason: error,
                },
            }
        })
    }

    /// Begins a call: the span, the copy kept for a retry or a dead letter,
    /// and the handler's future (a panic while building it is the call's
    /// outcome).
    fn begin(&self, slot: PartitionSlot, msg: Message) -> (Call, Result<HandlerFuture, Outcome>) {
        let (topic, partition, offset, attempt) = (msg.topic_name(), msg.partition(), msg.offset(), msg.attempt());
        let copy = self.policy.keeps_copy(attempt).then(|| msg.clone());
        let span = tracing::debug_span!(
            "message",
            subscriber = &*self.subscriber,
            topic = &*topic,
            partition,
            offset,
            key = tracing::field::Empty,
            attempt,
            traceparent = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if let Some(key) = msg.key() {
                span.record("key", String::from_utf8_lossy(key).as_ref());
            }
            if let Some(tp) = msg.header("traceparent").and_then(|h| h.value.as_deref()) {
                span.record("traceparent", String::from_utf8_lossy(tp).as_ref());
            }
        }
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let begun = {
            let _in_span = span.enter();
            self.handler.begin(msg, &self.context)
        };
        let call = Call {
            end: Ending {
                slot,
                topic,
                partition,
                offset,
                attempt,
                copy,
            },
            span,
            started,
        };
        (call, begun)
    }

    /// The conclusion of a message whose call kconc's own code broke off
    /// with a panic: it counts as panicked, and goes to the error policy
    /// without a retry (its copy may be gone), so it is final: skipped,
    /// or its partition stopped (also under a dead-letter policy, which
    /// would need the copy).
    fn conclude_after_panic(&self, slot: PartitionSlot, offset: i64, in_call: bool) -> Event {
        if in_call {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.panicked.fetch_add(1, Ordering::Relaxed);
        let reason = "kconc panicked while running or concluding the handler".to_owned();
        match &self.policy.on_error {
            OnError::Skip => Event::Done(Completion { slot, offset }),
            OnError::Stop | OnError::DeadLetter(_) => {
                self.stats.stopped.fetch_add(1, Ordering::Relaxed);
                Event::Stopped { slot, offset, reason }
            }
        }
    }

    /// Ends a call that took `took`: counts it, and decides by the error
    /// policy what its outcome leads to. Every outcome leads to exactly one
    /// conclusion; the error's own code (its text, its source chain, its
    /// drop) cannot break it off.
    fn conclude(&self, mut end: Ending, outcome: Outcome, took: std::time::Duration) -> Concluded {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.handler_seconds.0.observe(took.as_secs_f64());
        let (slot, partition, offset, attempt) = (end.slot, end.partition, end.offset, end.attempt);
        let copy = end.copy.take();
        let Described {
            text: error,
            retryable,
            what,
        } = match outcome {
            Outcome::Ok => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                return Concluded::Event(Event::Done(Completion { slot, offset }));
            }
            Outcome::Failed(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                describe_error(error)
            }
            Outcome::Panicked(panic) => {
                self.stats.panicked.fetch_add(1, Ordering::Relaxed);
                Described {
                    text: format!("handler panicked: {panic}"),
                    retryable: true,
                    what: "handler panicked",
                }
            }
        };
        // For the log lines below (only failures get here).
        let topic = end.topic.clone();
        if let (true, true, Some(copy)) = (retryable, self.policy.retries_left(attempt), &copy) {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let seed = (offset as u64) ^ (u64::from(attempt) << 48) ^ u64::from(clock);
            let delay = self.policy.delay(attempt, seed ^ (partition as u64).rotate_left(32));
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                subscriber = %self.subscriber, topic = &*topic, partition, offset, attempt, error,
                retry_in_ms = delay.as_millis() as u64,
                "{what}; retrying"
            );
            return Concluded::Event(Event::Retry {
                slot,
                msg: copy.clone().next_attempt(),
                due: Instant::now() + delay,
            });
        }
        match &self.policy.on_error {
            OnError::Skip => {
                tracing::warn!(
                    subscriber = %self.subscriber, topic = &*topic, partition, offset, attempt, error,
                    "{what}; skipped (the message counts as finished)"
                );
                Concluded::Event(Event::Done(Completion { slot, offset }))
            }
            OnError::Stop => {
                self.stats.stopped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    subscriber = %self.subscriber, topic = &*topic, partition, offset, attempt, error,
                    "{what}; partition stopped: nothing after this offset starts or is committed until it is reassigned or the program restarts"
                );
                Concluded::Event(Event::Stopped {
                    slot,
                    offset,
                    reason: error,
                })
            }
            OnError::DeadLetter(_) => match copy {
                Some(copy) => Concluded::DeadLetter(Box::new(DeadLetter { end, copy, error, what })),
                // Not reached: a dead-letter policy always keeps a copy.
                None => {
                    self.stats.stopped.fetch_add(1, Ordering::Relaxed);
                    Concluded::Event(Event::Stopped {
                        slot,
                        offset,
                        reason: error,
                    })
                }
            },
        }
    }

    /// Produces the message to the dead-letter topic, retrying what may
    /// succeed if tried again until the broker acknowledges it (or shutdown
    /// begins: then it is left uncommitted, to be redelivered). A failure
    /// retrying cannot fix stops the partition.
    async fn dead_letter(&self, slot: PartitionSlot, dlq: &str, msg: &Message, error: &str, what: &str) -> Event {
        let (topic, partition, offset, attempt) = (msg.topic(), msg.partition(), msg.offset(), msg.attempt());
        let mut wait = self.policy.backoff.max(std::time::Duration::from_millis(10));
        loop {
            match policy::dead_letter(&self.context, dlq, msg, error).await {
                Ok(()) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        subscriber = %self.subscriber, topic, partition, offset, attempt, error, dead_letter = dlq,
                        "{what}; message dead-lettered"
                    );
                    return Event::Done(Completion { slot, offset });
                }
                Err(failed) if failed.permanent => {
                    self.stats.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
                    self.stats.stopped.fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "dead letter to `{dlq}` failed and retrying cannot fix it: {}; the handler's error: {error}",
                        failed.reason
                    );
                    tracing::error!(
                        subscriber = %self.subscriber, topic, partition, offset, dead_letter = dlq, error = %failed.reason,
                        "dead-letter produce failed for good; partition stopped: nothing after this offset is handled or \
                         committed until it is reassigned or the program restarts"
                    );
                    return Event::Stopped { slot, offset, reason };
                }
                Err(failed) => {
                    self.stats.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        subscriber = %self.subscriber, topic, partition, offset, dead_letter = dlq, error = %failed.reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "dead-letter produce failed; retrying (the offset stays uncommitted)"
                    );
                    if self.context.is_shutting_down() {
                        return Event::Abandoned(slot, offset);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.context.shutting_down() => return Event::Abandoned(slot, offset),
                    }
                    wait = (wait * 2).min(self.policy.max_backoff.max(wait));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt as _;
    use std::task::{Context, Wake, Waker};

    struct Count(AtomicU64);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waiting(rx: tokio::sync::oneshot::Receiver<u32>) -> BoxFuture<'static, u32> {
        async move { rx.await.unwrap_or(0) }.boxed()
    }

    #[test]
    fn a_handover_waker_remembers_an_early_wake_and_forwards_later_ones() {
        let handover = Arc::new(Handover::default());
        let waker = Waker::from(handover.clone());
        waker.wake_by_ref();
        let worker = Arc::new(Count(AtomicU64::new(0)));
        handover.connect(&Waker::from(worker.clone()));
        assert_eq!(worker.0.load(Ordering::SeqCst), 1, "the early wake is passed on");
        waker.wake();
        assert_eq!(worker.0.load(Ordering::SeqCst), 2, "a later wake goes to the worker");
    }

    #[test]
    fn slots_poll_what_was_woken_reuse_places_and_lose_no_wake_after_a_stale_one() {
        let worker = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(worker.clone());
        let mut slots = Slots::new();
        slots.register(&Context::from_waker(&waker));
        let mut ended = Vec::new();

        let (tx_a, rx_a) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_a));
        slots.insert(async { 7 }.boxed());
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7], "a ready future ends on its first poll");
        assert!(!slots.is_empty());

        // The finished future's place is taken by the next one.
        let (tx_c, rx_c) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_c));
        assert_eq!(slots.slots.len(), 2);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7], "nothing was woken");
        let _ = tx_c.send(5);
        assert_eq!(worker.0.load(Ordering::SeqCst), 1, "a wake wakes the worker");
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5]);

        // A late wake for a finished future, then a new future in its place:
        // the new future's own wake must still get through.
        let place = slots.free[0];
        slots.slots[place].waker.wake_by_ref();
        let (tx_e, rx_e) = tokio::sync::oneshot::channel();
        slots.insert(waiting(rx_e));
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5], "a spurious poll ends nothing");
        let _ = tx_e.send(9);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5, 9]);

        let _ = tx_a.send(3);
        slots.poll_woken(&mut ended);
        assert_eq!(ended, [7, 5, 9, 3]);
        assert!(slots.is_empty());
        assert_eq!(slots.slots.len(), 2, "two places served four futures");
    }

    /// Feeds `n` first polls of `took` each, `waited` or not, counting how
    /// many the rule let begin here.
    fn feed(inline: &mut Inline, n: u32, took: std::time::Duration, waited: bool) -> u32 {
        let mut here = 0;
        for _ in 0..n {
            if inline.on() {
                here += 1;
                let end = if waited {
                    FirstPollEnd::Waited
                } else {
                    FirstPollEnd::Ended
                };
                inline.record(took, end);
            }
        }
        here
    }

    #[test]
    fn first_polls_stay_on_the_poll_thread_only_while_handlers_end_there_quickly() {
        let quick = std::time::Duration::from_micros(2);
        let mut auto = Inline::new(FirstPoll::Auto);
        assert_eq!(
            feed(&mut auto, 10_000, quick, false),
            10_000,
            "quick handlers that end stay here"
        );

        // Handlers that wait: the window gives up after half of it waited,
        // then tries again after 256, 512, 1,024 ... messages.
        let mut waits = Inline::new(FirstPoll::Auto);
        assert_eq!(
            feed(&mut waits, INLINE_WINDOW / 2 + 1, quick, true),
            INLINE_WINDOW / 2 + 1
        );
        assert!(!waits.on);
        assert_eq!(feed(&mut waits, FIRST_BACKOFF - 1, quick, true), 0);
        assert_eq!(
            feed(&mut waits, 1, quick, true),
            0,
            "the 256th message is counted, then a try"
        );
        assert!(waits.on);
        assert_eq!(
            feed(&mut waits, INLINE_WINDOW / 2 + 1, quick, true),
            INLINE_WINDOW / 2 + 1
        );
        assert_eq!(waits.left, 2 * FIRST_BACKOFF, "the wait doubles after a failed try");
        let here = feed(&mut waits, 100_000, quick, true);
        assert!(here < 1_000, "{here} of 100,000 waiting handlers began here");

        // One slow first poll stops it at once; a good window afterwards
        // resets the wait.
        let mut slow = Inline::new(FirstPoll::Auto);
        assert_eq!(feed(&mut slow, 1, INLINE_MAX * 2, false), 1);
        assert!(!slow.on);
        assert_eq!(feed(&mut slow, FIRST_BACKOFF, quick, false), 0);
        assert!(slow.on);
        assert_eq!(feed(&mut slow, INLINE_WINDOW, quick, false), INLINE_WINDOW);
        assert_eq!(slow.backoff, FIRST_BACKOFF);

        // Steady work over budget (here 40 µs each) stops it within a window.
        let mut busy = Inline::new(FirstPoll::Auto);
        let here = feed(&mut busy, INLINE_WINDOW, INLINE_BUDGET * 2, false);
        assert!(here <= INLINE_WINDOW / 2 + 1 && !busy.on, "{here}");

        // One first poll that failed there stops it at once.
        let mut failing = Inline::new(FirstPoll::Auto);
        assert!(failing.on());
        failing.record(quick, FirstPollEnd::Failed);
        assert!(!failing.on, "a failed first poll keeps Auto on");

        let mut always = Inline::new(FirstPoll::PollThread);
        assert_eq!(feed(&mut always, 1_000, INLINE_MAX * 2, true), 1_000);
        let mut never = Inline::new(FirstPoll::Worker);
        assert_eq!(feed(&mut never, 100_000, quick, false), 0);
    }
}

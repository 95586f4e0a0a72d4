//! Completion and the error policy: what a handler's outcome comes to
//! (done, a retry, a stop, a dead letter), with the error told with its
//! causes; every outcome is final, whatever the user's code does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use super::event::{Completion, Event, MessageTag};
use crate::context::Context;
use crate::handler::{BoxError, FutureSlot, Handler, Outcome};
use crate::message::Message;
use crate::policy::{self, ErrorPolicy, OnError};
use crate::stats::Stats;
use crate::telemetry::{CallEnd, Failure, Telemetry};

/// What every handler of one subscriber shares.
#[derive(Debug)]
pub(crate) struct HandlerEnv {
    pub(crate) subscriber: Arc<str>,
    pub(crate) handler: Handler,
    /// Where a `store = "sql"` subscriber records finished offsets.
    pub(crate) store: Option<Arc<dyn crate::sql::Store>>,
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
    /// Which hand-overs may still begin once shutdown has begun.
    pub(crate) admission: super::worker::Admission,
    /// The hand-over's emptied batches, for the next ones.
    pub(crate) spare_starts: super::spares::Spares<super::worker::Start>,
    /// The workers' emptied batches of events, for the next ones.
    pub(crate) spare_events: super::spares::Spares<Event>,
    /// The spans and metrics of its calls.
    pub(crate) telemetry: Telemetry,
}

/// A message to dead-letter: where it came from (with the message as it
/// was) and the last attempt's error.
pub(crate) struct DeadLetter {
    pub(super) end: Ending,
    pub(super) copy: Message,
    pub(super) error: String,
    /// What failed, for the log (see [`Described::what`]).
    pub(super) what: &'static str,
}

/// A failed message's error, as the log and the dead letter tell it.
pub(super) struct Described {
    /// The error and its causes (its `source()` chain), `: `-joined.
    pub(super) text: String,
    /// Whether the policy may retry it.
    pub(super) retryable: bool,
    /// What failed, for the log: the handler, or the decoding of the
    /// message before it (then the handler did not run).
    pub(super) what: &'static str,
}

/// A handler's error as text (with its causes, as anyhow's `{:#}` shows
/// them; a cause whose text already ends the text so far is not repeated)
/// and whether the policy may retry it. Both run the error's own code
/// (`Display`, `source()`), which must not take kconc down: should it
/// panic, the error reads as such and may be retried.
pub(super) fn describe_error(error: BoxError) -> Described {
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
pub(super) fn drop_guarded<T>(value: T) {
    run_guarded(move || drop(value));
}

/// Runs `f` (which drops something of the user's) where a panic cannot
/// escape.
pub(super) fn run_guarded(f: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::warn!("a handler's future or error panicked while being dropped; the outcome stands");
    }
}

/// One handler call in progress.
pub(crate) struct Call {
    pub(super) end: Ending,
    pub(super) span: tracing::Span,
    pub(super) started: Instant,
}

/// What a message's conclusion needs to know.
pub(super) struct Ending {
    pub(super) slot: MessageTag,
    /// Kept for the log line of a failure; cloning the shared name is
    /// cheaper than formatting on every message.
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) attempt: u32,
    /// The message as it was, for a retry or a dead letter (when the policy
    /// may need one: the handler consumes the message). A clone of a copied
    /// message shares its record; one of a held record is a copy (see
    /// `Message`'s `Clone`).
    pub(super) copy: Option<Message>,
}

impl Ending {
    /// Its parts, as a value of their own (without the copy, which the
    /// conclusion has taken): for a dead letter, which outlives the call.
    fn to_owned_end(&self) -> Ending {
        Ending {
            slot: self.slot,
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            attempt: self.attempt,
            copy: None,
        }
    }
}

/// How a handler call ended, for the poll loop.
pub(super) enum Concluded {
    Event(Event),
    /// Failed its last attempt and the policy dead-letters it: the produce
    /// comes first.
    DeadLetter(Box<DeadLetter>),
}

/// A handler ran longer than its subscriber's `handler_timeout` and was
/// dropped: its message failed with this error (retried if retries are
/// left, then the error policy).
#[derive(Debug, thiserror::Error)]
#[error("{}", match unacknowledged_reply {
    None => format!("the handler ran longer than handler_timeout ({after:?}) and was cancelled"),
    Some(topic) => format!(
        "the broker did not acknowledge the reply to `{topic}` within handler_timeout ({after:?}); \
         the handler had returned (a retry runs it again)"
    ),
})]
#[non_exhaustive]
pub struct HandlerTimedOut {
    /// The `handler_timeout` it ran over.
    pub after: std::time::Duration,
    /// The reply topic whose acknowledgement it was still waiting for, if
    /// that is where the time went (the handler itself had returned).
    pub unacknowledged_reply: Option<String>,
}

impl HandlerEnv {
    /// The timer that ends a handler begun at `started`, if there is a
    /// `handler_timeout`.
    pub(super) fn deadline(&self, started: Instant) -> Option<std::pin::Pin<Box<tokio::time::Sleep>>> {
        let timeout = self.handler_timeout?;
        Some(Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            started + timeout,
        ))))
    }

    fn skipped(&self, topic: &str, partition: i32, offset: i64, attempt: u32, error: &str, what: &str) {
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            subscriber = %self.subscriber, topic, partition, offset, attempt, error,
            "{what}; skipped (the message counts as finished)"
        );
    }

    /// Boxed: the dead-letter produce is rare and its future is large;
    /// inline, it would make every message's future (built and moved per
    /// message) several times bigger. With `store = "sql"`, a skip comes
    /// here too: it and a dead letter are final once the database records
    /// the offset, in a transaction of its own (after the dead letter's
    /// produce: a crash between the two produces it again).
    pub(super) fn dead_letter_boxed(
        &self,
        dead: DeadLetter,
    ) -> std::pin::Pin<Box<dyn Future<Output = Event> + Send + '_>> {
        Box::pin(async move {
            let DeadLetter { end, copy, error, what } = dead;
            match &self.policy.on_error {
                OnError::DeadLetter(dlq) => {
                    let ended = self.dead_letter(end.slot, dlq, &copy, &error, what).await;
                    match (&ended, &self.store) {
                        (Event::Done(_), Some(store)) => {
                            store.record(&end.topic, end.partition, end.offset).await;
                            ended
                        }
                        _ => ended,
                    }
                }
                OnError::Skip => {
                    if let Some(store) = &self.store {
                        store.record(&end.topic, end.partition, end.offset).await;
                    }
                    self.skipped(&end.topic, end.partition, end.offset, end.attempt, &error, what);
                    Event::Done(Completion {
                        slot: end.slot,
                        offset: end.offset,
                    })
                }
                // Not reached: only a dead-letter policy, or a skip with
                // `store = "sql"`, concludes so.
                _ => Event::Stopped {
                    slot: end.slot,
                    offset: end.offset,
                    reason: error,
                },
            }
        })
    }

    /// Begins a call: the span, the copy kept for a retry or a dead letter,
    /// and the handler's future, in `fut` (a panic while building it is the
    /// call's outcome).
    pub(super) fn begin(&self, slot: MessageTag, msg: Message, fut: &mut FutureSlot) -> (Call, Result<(), Outcome>) {
        let call = self.open_call(slot, &msg);
        let begun = self.call_handler(&call, msg, fut);
        (call, begun)
    }

    /// As [`HandlerEnv::begin`], the call made in `into` (a worker's
    /// place: the call is not moved there afterwards).
    pub(super) fn begin_in<'c>(
        &self,
        slot: MessageTag,
        msg: Message,
        fut: &mut FutureSlot,
        into: &'c mut Option<Call>,
    ) -> (&'c mut Call, Result<(), Outcome>) {
        let call = into.insert(self.open_call(slot, &msg));
        let begun = self.call_handler(call, msg, fut);
        (call, begun)
    }

    fn call_handler(&self, call: &Call, msg: Message, fut: &mut FutureSlot) -> Result<(), Outcome> {
        let _in_span = call.span.enter();
        self.handler.begin(msg, &self.context, fut)
    }

    /// A call of `msg`'s handler, begun now: what its conclusion needs, its
    /// span, counted as in flight.
    fn open_call(&self, slot: MessageTag, msg: &Message) -> Call {
        let end = self.ending(slot, msg);
        let span = self.telemetry.process_span(msg, &end.topic);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        Call { end, span, started }
    }

    /// What `msg`'s conclusion will need, read before its handler takes it
    /// (with the copy the policy may need for a retry or a dead letter).
    pub(super) fn ending(&self, slot: MessageTag, msg: &Message) -> Ending {
        let attempt = msg.attempt();
        Ending {
            slot,
            topic: msg.topic_name(),
            partition: msg.partition(),
            offset: msg.offset(),
            attempt,
            copy: self.policy.keeps_copy(attempt).then(|| msg.clone()),
        }
    }

    /// The conclusion of a message whose call kconc's own code broke off
    /// with a panic: it counts as panicked, and goes to the error policy
    /// without a retry (its copy may be gone), so it is final: skipped,
    /// or its partition stopped (also under a dead-letter policy, which
    /// would need the copy).
    pub(super) fn conclude_after_panic(&self, slot: MessageTag, offset: i64, in_call: bool) -> Event {
        if in_call {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.stats.panicked.fetch_add(1, Ordering::Relaxed);
        let reason = "kconc panicked while running or concluding the handler".to_owned();
        match &self.policy.on_error {
            OnError::Skip => {
                self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                Event::Done(Completion { slot, offset })
            }
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
    pub(super) fn conclude(
        &self,
        end: &mut Ending,
        span: &tracing::Span,
        outcome: Outcome,
        took: std::time::Duration,
    ) -> Concluded {
        self.stats.handler_seconds.0.observe(took.as_secs_f64());
        self.telemetry.call_ended(
            span,
            CallEnd {
                topic: &end.topic,
                partition: end.partition,
                consumed: usize::from(end.attempt == 1),
                failure: Failure::of(&outcome),
                took,
            },
        );
        self.settle(end, outcome)
    }

    /// As [`HandlerEnv::conclude`], without timing a call (a batch's
    /// messages share theirs).
    pub(super) fn settle(&self, end: &mut Ending, outcome: Outcome) -> Concluded {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
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
                msg: Box::new(copy.clone().next_attempt()),
                due: Instant::now() + delay,
            });
        }
        match &self.policy.on_error {
            // With `store = "sql"` the skip is final once the database
            // records it, in a transaction of its own.
            OnError::Skip if self.store.is_some() => Concluded::DeadLetter(Box::new(DeadLetter {
                copy: Message::new(&topic, partition, offset),
                end: end.to_owned_end(),
                error,
                what,
            })),
            OnError::Skip => {
                self.skipped(&topic, partition, offset, attempt, &error, what);
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
                Some(copy) => Concluded::DeadLetter(Box::new(DeadLetter {
                    end: end.to_owned_end(),
                    copy,
                    error,
                    what,
                })),
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
    pub(super) async fn dead_letter(
        &self,
        slot: MessageTag,
        dlq: &str,
        msg: &Message,
        error: &str,
        what: &str,
    ) -> Event {
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

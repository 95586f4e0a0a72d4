//! A batch handler's call on a worker: one call for the messages the
//! schedule released together, then each message's outcome under the error
//! policy, as if it had been handled alone. The batch reports once, when
//! every message is concluded (dead letters produced), so a revoke or a
//! shutdown sees all of it running or all of it ended: never half.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use super::complete::{drop_guarded, Concluded, HandlerEnv, HandlerTimedOut};
use super::event::{Event, MessageTag};
use crate::batch::BatchEnd;
use crate::handler::{panic_text, BoxError, Outcome};
use crate::message::Message;
use crate::telemetry::{CallEnd, Failure};

impl HandlerEnv {
    /// [`HandlerEnv::run_batch`], boxed: made once per batch.
    pub(super) fn run_batch_boxed(
        &self,
        batch: Vec<(MessageTag, Message)>,
    ) -> Pin<Box<dyn Future<Output = Event> + Send + '_>> {
        Box::pin(self.run_batch(batch))
    }

    /// Calls the batch handler on `batch` and concludes each message: one
    /// the handler failed (or every one, if the call failed, panicked or
    /// ran over `handler_timeout`) goes to the error policy alone; every
    /// other one is done. Returns [`Event::BatchEnded`].
    async fn run_batch(&self, batch: Vec<(MessageTag, Message)>) -> Event {
        let n = batch.len();
        if batch.is_empty() {
            return Event::BatchEnded(Vec::new());
        }
        let span = self.telemetry.batch_span(&batch);
        let mut ends = Vec::with_capacity(n);
        let mut msgs = Vec::with_capacity(n);
        for (slot, msg) in batch {
            ends.push(self.ending(slot, &msg));
            msgs.push(msg);
        }
        // With `reply`, each reply is keyed like its input and carries its
        // trace headers: the inputs are kept (a clone shares the record).
        let inputs = self.context.reply_topic().map(|_| msgs.clone()).unwrap_or_default();
        self.stats.in_flight.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.batch_size.0.observe(n as f64);
        let started = Instant::now();
        let begun = {
            let _in_span = span.enter();
            self.handler.begin_batch(msgs, &self.context)
        };
        let ended: Result<BatchEnd, Outcome> = match begun {
            Err(outcome) => Err(outcome),
            Ok(fut) => {
                // The call and its replies' acknowledgements, under one
                // deadline.
                let mut call = Box::pin(async move {
                    let mut end = fut.await;
                    // A failed item's replies are not published: it is
                    // handled again (or dead-lettered, or skipped) without them.
                    let failed: Vec<usize> = end.failed.iter().map(|(i, _)| *i).collect();
                    end.replies.retain(|(i, _)| !failed.contains(i));
                    if !end.replies.is_empty() {
                        let replies = std::mem::take(&mut end.replies);
                        let failed = crate::reply::publish_batch(&self.context, &inputs, replies).await;
                        end.failed.extend(failed);
                    }
                    end
                });
                let mut deadline = self.deadline(started);
                let ended = std::future::poll_fn(|cx| {
                    let _in_span = span.enter();
                    match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))) {
                        Ok(Poll::Ready(failures)) => Poll::Ready(Ok(failures)),
                        Err(panic) => Poll::Ready(Err(Outcome::Panicked(panic_text(&*panic)))),
                        Ok(Poll::Pending) => {
                            let over = deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                            if over {
                                Poll::Ready(Err(Outcome::Failed(self.timed_out())))
                            } else {
                                Poll::Pending
                            }
                        }
                    }
                })
                .await;
                drop_guarded(call);
                ended
            }
        };
        let took = started.elapsed();
        self.stats.handler_seconds.0.observe(took.as_secs_f64());
        if let Some(first) = ends.first() {
            self.telemetry.call_ended(
                &span,
                CallEnd {
                    topic: &first.topic,
                    partition: first.partition,
                    consumed: ends.iter().filter(|e| e.attempt == 1).count(),
                    failure: ended.as_ref().err().and_then(Failure::of),
                    took,
                },
            );
        }
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        match ended {
            Ok(end) => {
                for (i, error) in end.failed {
                    // The first failure of a message counts; a second one
                    // of it is dropped.
                    match outcomes.get_mut(i) {
                        Some(slot @ None) => *slot = Some(Outcome::Failed(error)),
                        _ => drop_guarded(error),
                    }
                }
            }
            Err(Outcome::Panicked(text)) => {
                for outcome in &mut outcomes {
                    *outcome = Some(Outcome::Panicked(text.clone()));
                }
            }
            Err(_) => {
                for outcome in &mut outcomes {
                    *outcome = Some(Outcome::Failed(self.timed_out()));
                }
            }
        }
        let mut events = Vec::with_capacity(n);
        for (mut end, outcome) in ends.into_iter().zip(outcomes) {
            match self.settle(&mut end, outcome.unwrap_or(Outcome::Ok)) {
                Concluded::Event(event) => events.push(event),
                Concluded::DeadLetter(dead) => events.push(self.dead_letter_boxed(*dead).await),
            }
        }
        Event::BatchEnded(events)
    }

    /// The error of a call that ran over `handler_timeout`.
    fn timed_out(&self) -> BoxError {
        Box::new(HandlerTimedOut {
            after: self.handler_timeout.unwrap_or_default(),
            unacknowledged_reply: None,
        })
    }
}

/// The event of a batch that never ran: each of its messages abandoned.
pub(super) fn abandoned(batch: &[(MessageTag, Message)]) -> Event {
    Event::BatchEnded(
        batch
            .iter()
            .map(|(slot, msg)| Event::Abandoned(*slot, msg.offset()))
            .collect(),
    )
}

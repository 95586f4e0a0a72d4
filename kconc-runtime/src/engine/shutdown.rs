//! Shutdown: stop fetching, wait for the running handlers (serving
//! rebalances meanwhile), drop what still runs at the deadline, commit what
//! finished, and close the consumer, all within `shutdown_timeout`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rebalance::ClientHooks;
use super::{with_engine, IDLE_WAIT};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// How much of `shutdown_timeout` a shutdown keeps for the final commit:
/// in-flight handlers get the rest.
pub(super) fn final_commit_allowance(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 4).min(Duration::from_secs(5))
}

/// Stops fetching, waits for in-flight handlers (polling meanwhile so
/// rebalances are still served), drops those still running, and commits,
/// all within `shutdown_timeout`; returns that deadline.
pub(super) fn drain_on_shutdown(consumer: &BaseConsumer<ClientHooks>) -> Instant {
    let started = Instant::now();
    let Some((deadline, handlers_until)) = with_engine(consumer, |e| {
        e.closing = true;
        e.dispatcher.stats().closing.store(true, Ordering::Relaxed);
        // Messages that have not started are read again after a restart.
        e.waiting.clear();
        e.delayed.clear();
        let deadline = started + e.settings.shutdown_timeout;
        e.shutdown_deadline = Some(deadline);
        (deadline, deadline - final_commit_allowance(e.settings.shutdown_timeout))
    }) else {
        return started;
    };
    let mut abandoned = 0;
    loop {
        let still = with_engine(consumer, |e| {
            e.drain_events();
            let left = handlers_until.saturating_duration_since(Instant::now());
            if e.parts.running() > 0 && !left.is_zero() {
                e.wait_event(left.min(IDLE_WAIT));
            }
            e.parts.running()
        })
        .unwrap_or(0);
        if still == 0 {
            break;
        }
        if Instant::now() >= handlers_until {
            tracing::warn!(
                subscriber = &*consumer.context().subscriber,
                still_running = still,
                "shutdown timeout: dropping the handlers still running and committing what finished; \
                 unfinished messages will be redelivered"
            );
            with_engine(consumer, |e| e.dispatcher.abort());
            abandoned = still;
            break;
        }
        // Serve rebalance callbacks; a message polled now is not dispatched.
        let _ = consumer.poll(Duration::ZERO);
    }
    final_commit(consumer, started, deadline, abandoned);
    deadline
}

/// Commits every finished prefix, retrying (and polling in between, so a
/// rebalance in progress can complete and give the member its new
/// generation) until it succeeds or `deadline` passes.
/// `abandoned` handlers were dropped at the shutdown timeout.
pub(super) fn final_commit(
    consumer: &BaseConsumer<ClientHooks>,
    started: Instant,
    deadline: Instant,
    abandoned: usize,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(result) = with_engine(consumer, |e| {
            e.maybe_commit(true);
            e.committer.flush(Vec::new(), deadline)
        }) else {
            return;
        };
        let name = consumer.context().subscriber.clone();
        match result {
            Ok(()) if abandoned == 0 => {
                tracing::info!(
                    subscriber = &*name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "shutdown: in-flight handlers drained and offsets committed"
                );
                return;
            }
            Ok(()) => {
                tracing::warn!(
                    subscriber = &*name,
                    abandoned,
                    took_ms = started.elapsed().as_millis() as u64,
                    "shutdown: {abandoned} handler(s) abandoned at the shutdown timeout (their messages will be \
                     redelivered); what finished is committed"
                );
                return;
            }
            Err(err) if Instant::now() + backoff >= deadline => {
                tracing::warn!(
                    subscriber = &*name,
                    error = %err,
                    "shutdown: final commit failed; uncommitted messages will be redelivered"
                );
                return;
            }
            Err(err) => {
                tracing::debug!(subscriber = &*name, error = %err, "shutdown: final commit failed; retrying");
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    let _ = consumer.poll(until.saturating_duration_since(Instant::now()));
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Takes the engine out of the context (which stops the committer and breaks
/// the consumer -> context -> committer -> consumer cycle), then drops the
/// consumer, which leaves the group.
pub(super) fn close(consumer: Arc<BaseConsumer<ClientHooks>>, deadline: Instant) {
    let engine = consumer.context().engine().take();
    let name = consumer.context().subscriber.clone();
    if let Some(engine) = engine {
        if !engine.committer.stop(deadline) {
            // A commit that does not return (a coordinator that never
            // answers): the committer is left to end alone, and with it
            // its share of the consumer; the program does not wait for it.
            tracing::warn!(
                subscriber = &*name,
                "shutdown: a commit is still in progress at the shutdown timeout; not waiting for it"
            );
        }
    }
    let started = Instant::now();
    let refs = Arc::strong_count(&consumer);
    drop(consumer);
    tracing::debug!(
        subscriber = &*name,
        refs,
        took_ms = started.elapsed().as_millis() as u64,
        "consumer closed"
    );
}

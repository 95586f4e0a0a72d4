//! What an operator hears about the cluster: whether it can be reached,
//! whether each subscribed topic exists, and librdkafka's own warnings,
//! each said once instead of once per subscriber and retry.
//!
//! One [`ClusterWatch`] per app, shared by its subscribers' consumers (their
//! librdkafka log lines and errors go through it) and by a watcher task
//! that asks the cluster for the subscribed topics' metadata now and then
//! (every [`CHECK_EVERY`], more often while something is wrong): its answers
//! say when the cluster is reachable again and when a missing topic exists.
//!
//! - The cluster becomes unreachable when librdkafka reports that all
//!   brokers are down: one error line names the brokers and the last reason
//!   a connection failed; while it stays so, one reminder every
//!   [`REMIND_EVERY`]; one line when it is reachable again (a fetched
//!   message, an assignment, or a metadata answer). Readiness says "cannot
//!   reach the cluster: ..." meanwhile, and `kconc_cluster_reachable` is 0.
//! - Every other librdkafka line is logged once per [`REMIND_EVERY`] for the
//!   same text, whichever subscriber's client said it; a repeat says how
//!   many were left out.
//! - Once the app shuts down, connection failures are no longer logged
//!   (their consumers are closing: nothing is left to reach the cluster for).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

mod topics;

pub(crate) use topics::{missing_at_start, spawn, Watched};

/// How often a condition that lasts (an unreachable cluster, a missing
/// topic, a librdkafka line that repeats) is said again, at most.
pub(crate) const REMIND_EVERY: Duration = Duration::from_secs(60);

/// How often the watcher asks for the subscribed topics' metadata while all
/// is well.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(30);

/// How often it asks while the cluster is unreachable or a topic missing.
const CHECK_OFTEN: Duration = Duration::from_secs(2);

/// How long one metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The app's view of its cluster (see the module docs).
#[derive(Debug)]
pub(crate) struct ClusterWatch {
    /// The bootstrap servers, as configured (they hold no secret).
    brokers: String,
    /// The cluster is unreachable now (a fast check for the poll loops).
    down: AtomicBool,
    /// The cluster has answered at least once.
    answered: AtomicBool,
    /// The app is shutting down: connection failures are not logged.
    closed: AtomicBool,
    state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Since when, and why, the cluster cannot be reached.
    down: Option<Down>,
    /// The last reason a broker connection failed.
    last_failure: Option<String>,
    /// librdkafka lines said recently: when, and how many repeats were
    /// left out since.
    said: HashMap<String, (Instant, u64)>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    reason: String,
    reminded: Instant,
}

impl ClusterWatch {
    pub(crate) fn new(brokers: &str) -> Arc<Self> {
        Arc::new(Self {
            brokers: brokers.to_owned(),
            down: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            state: Mutex::new(WatchState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether it is unreachable, since how long and why.
    pub(crate) fn unreachable(&self) -> Option<(Duration, String)> {
        if !self.down.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.state();
        state.down.as_ref().map(|d| (d.since.elapsed(), d.reason.clone()))
    }

    /// The brokers it is told to reach.
    pub(crate) fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The app shuts down: connection failures are no longer logged.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// librdkafka reports that no broker can be reached.
    fn all_brokers_down(&self, subscriber: &str, reported: &str) {
        let now = Instant::now();
        let mut state = self.state();
        let reason = state.last_failure.clone().unwrap_or_else(|| reported.to_owned());
        let closed = self.closed.load(Ordering::Relaxed);
        match &mut state.down {
            None => {
                state.down = Some(Down {
                    since: now,
                    reason: reason.clone(),
                    reminded: now,
                });
                self.down.store(true, Ordering::Relaxed);
                if closed {
                    tracing::debug!(subscriber, "librdkafka (shutting down): {reported}");
                } else {
                    tracing::error!(
                        brokers = &*self.brokers,
                        subscriber,
                        reason,
                        "cannot reach the Kafka cluster: no broker answers; retrying (said again every {} s while it lasts)",
                        REMIND_EVERY.as_secs()
                    );
                }
            }
            Some(down) => {
                tracing::debug!(subscriber, "librdkafka: {reported}");
                down.reason = reason.clone();
                if now.duration_since(down.reminded) >= REMIND_EVERY && !closed {
                    down.reminded = now;
                    tracing::error!(
                        brokers = &*self.brokers,
                        reason,
                        unreachable_for_s = now.duration_since(down.since).as_secs(),
                        "still cannot reach the Kafka cluster; retrying"
                    );
                }
            }
        }
    }

    /// Something came back from the cluster (a message, an assignment, a
    /// metadata answer): it is reachable.
    pub(crate) fn reachable(&self) {
        if !self.down.load(Ordering::Relaxed) {
            if !self.answered.load(Ordering::Relaxed) {
                self.answered.store(true, Ordering::Relaxed);
            }
            return;
        }
        self.answered.store(true, Ordering::Relaxed);
        let mut state = self.state();
        self.down.store(false, Ordering::Relaxed);
        state.last_failure = None;
        if let Some(down) = state.down.take() {
            if !self.closed.load(Ordering::Relaxed) {
                tracing::info!(
                    brokers = &*self.brokers,
                    unreachable_for_s = down.since.elapsed().as_secs(),
                    "the Kafka cluster is reachable again"
                );
            }
        }
    }

    /// An error librdkafka reported to a client, with its reason (the
    /// client's error callback).
    pub(crate) fn client_error(&self, subscriber: &str, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.all_brokers_down(subscriber, reason),
            Some(code) if connection_failure(code) => {
                self.state().last_failure = Some(reason.to_owned());
                // Before anything answered, and while no broker does, a
                // failed connection is the unreachable cluster's reason,
                // said once by `all_brokers_down`; otherwise one broker
                // of several failed.
                let partial = self.answered.load(Ordering::Relaxed) && !self.down.load(Ordering::Relaxed);
                if partial && !self.closed.load(Ordering::Relaxed) {
                    self.say(tracing::Level::WARN, subscriber, "", &format!("{reason} ({error})"));
                } else {
                    tracing::debug!(subscriber, error = %error, "librdkafka: {reason}");
                }
            }
            _ => self.say(tracing::Level::WARN, subscriber, "", &format!("{reason} ({error})")),
        }
    }

    /// An error a consumer's poll returned. It repeats what the error
    /// callback reported (without the reason): only what that did not
    /// say is logged.
    pub(crate) fn consumer_error(&self, subscriber: &str, error: &KafkaError) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.all_brokers_down(subscriber, "all brokers are down"),
            Some(code) if connection_failure(code) => {}
            _ => self.say(
                tracing::Level::WARN,
                subscriber,
                "",
                &format!("consumer error: {error}"),
            ),
        }
    }

    /// A librdkafka log line (the client's log callback).
    pub(crate) fn log(&self, level: RDKafkaLogLevel, subscriber: &str, facility: &str, text: &str) {
        let level = match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::Level::ERROR
            }
            RDKafkaLogLevel::Warning => tracing::Level::WARN,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::Level::INFO,
            RDKafkaLogLevel::Debug => tracing::Level::DEBUG,
        };
        // A broker connection that failed: the error callback reports it
        // too (see `client_error`), with the same text.
        if facility == "FAIL" {
            self.state().last_failure = Some(strip_thread(text).to_owned());
            tracing::debug!(subscriber, facility, "librdkafka: {text}");
            return;
        }
        if level == tracing::Level::DEBUG {
            tracing::debug!(subscriber, facility, "librdkafka: {text}");
            return;
        }
        self.say(level, subscriber, facility, text);
    }

    /// Logs a librdkafka line, unless the same text was said within
    /// [`REMIND_EVERY`] (by any subscriber's client).
    fn say(&self, level: tracing::Level, subscriber: &str, facility: &str, text: &str) {
        let key = strip_thread(text);
        let now = Instant::now();
        let repeated = {
            let mut state = self.state();
            if state.said.len() > 1000 {
                state.said.retain(|_, (at, _)| now.duration_since(*at) < REMIND_EVERY);
            }
            match state.said.get_mut(key) {
                Some((at, left_out)) if now.duration_since(*at) < REMIND_EVERY => {
                    *left_out += 1;
                    return;
                }
                Some((at, left_out)) => {
                    *at = now;
                    std::mem::take(left_out)
                }
                None => {
                    state.said.insert(key.to_owned(), (now, 0));
                    0
                }
            }
        };
        let also = if repeated > 0 {
            format!(" (and {repeated} times more in the last {} s)", REMIND_EVERY.as_secs())
        } else {
            String::new()
        };
        match level {
            tracing::Level::ERROR => tracing::error!(subscriber, facility, "librdkafka: {text}{also}"),
            tracing::Level::WARN => tracing::warn!(subscriber, facility, "librdkafka: {text}{also}"),
            _ => tracing::info!(subscriber, facility, "librdkafka: {text}{also}"),
        }
    }
}

/// Errors of a broker connection (not of the cluster as a whole).
fn connection_failure(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SSL
    )
}

/// A librdkafka log line without its `[thrd:...]: ` prefix, which names
/// the client's thread: the same failure reads alike from every client.
fn strip_thread(text: &str) -> &str {
    match text.strip_prefix("[thrd:").and_then(|t| t.split_once("]: ")) {
        Some((_, rest)) => rest,
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_prefix_is_not_part_of_what_is_said() {
        assert_eq!(
            strip_thread("[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect failed"),
            "127.0.0.1:1/bootstrap: Connect failed"
        );
        assert_eq!(strip_thread("plain"), "plain");
    }

    #[test]
    fn the_cluster_is_down_until_something_answers() {
        let watch = ClusterWatch::new("127.0.0.1:1");
        assert!(watch.unreachable().is_none());
        watch.log(
            RDKafkaLogLevel::Error,
            "s",
            "FAIL",
            "[thrd:x]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        watch.client_error("s", &down, "1/1 brokers are down");
        let (_, reason) = watch.unreachable().unwrap();
        assert_eq!(
            reason,
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
        watch.consumer_error("s", &KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown));
        assert!(watch.unreachable().is_some());
        watch.reachable();
        assert!(watch.unreachable().is_none());
    }
}

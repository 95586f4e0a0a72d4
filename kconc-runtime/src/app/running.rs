//! A running app: its handles, its counters and health, and its shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::hooks::{Setup, StopHook};
use crate::embedded::EmbeddedCluster;
use crate::engine::Runner;
use crate::error::Error;
use crate::handler::BoxError;
use crate::health::{self, Health, HealthThresholds};
use crate::stats::{PartitionPause, Stats, StatsSnapshot, StoppedPartition};
use crate::watch::Watched;

/// How much longer than the longest `shutdown_timeout` of its subscribers
/// a program's exit may take after a shutdown began (the first signal):
/// the subscribers' own drain, final commit and close keep within their
/// `shutdown_timeout`; they, the stop hooks and the HTTP endpoint are done
/// by half of this after it ([`Running::shutdown`] returns then at the
/// latest), and what has not ended by then (a consumer whose close does not
/// return, a commit the coordinator never answers, a stop hook) is left
/// behind; `main!()`'s runtime gets the other half to end.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// Subscribers that are running.
///
/// Dropping it without [`Running::shutdown`] starts a shutdown too (its
/// consumers drain, commit and leave their groups on their own threads):
/// no consumer keeps consuming once its owner is gone.
pub struct Running {
    pub(super) token: CancellationToken,
    pub(super) runners: Vec<Runner>,
    /// The longest `shutdown_timeout` of the subscribers.
    pub(super) shutdown_timeout: Duration,
    pub(super) embedded: Option<EmbeddedCluster>,
    pub(super) bootstrap: String,
    pub(super) watched: Vec<Watched>,
    pub(super) thresholds: HealthThresholds,
    pub(super) http: Option<HttpServer>,
    /// Run after every subscriber has stopped.
    pub(super) stop_hooks: Vec<StopHook>,
    /// What the hooks get.
    pub(super) setup: Setup,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("subscribers", &self.runners.iter().map(|r| &r.name).collect::<Vec<_>>())
            .field("bootstrap", &self.bootstrap)
            .field("shutting_down", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The HTTP endpoint's task, closed after the subscribers have stopped.
#[derive(Debug)]
pub(super) struct HttpServer {
    pub(super) local: std::net::SocketAddr,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) stop: CancellationToken,
}

/// One subscriber's live counters and partition state (see
/// [`Running::stats_handle`]).
#[derive(Clone, Debug)]
pub struct StatsHandle(Arc<Stats>);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.0.snapshot()
    }

    /// The partitions assigned now, as (topic, partition), sorted.
    pub fn assigned_partitions(&self) -> Vec<(String, i32)> {
        self.0.assigned()
    }

    /// The partitions backpressure has paused, now or before.
    pub fn partition_pauses(&self) -> Vec<PartitionPause> {
        self.0.pauses()
    }

    /// The partitions the error policy has stopped.
    pub fn stopped_partitions(&self) -> Vec<StoppedPartition> {
        self.0.stopped_partitions()
    }

    /// The latest statistics librdkafka emitted for the subscriber's
    /// consumer, as JSON (its per-broker request counts, queue sizes,
    /// latencies), when the `statistics.interval.ms` property is set
    /// (`--property statistics.interval.ms=5000`); `None` before the first.
    pub fn librdkafka_statistics(&self) -> Option<String> {
        self.0.librdkafka_statistics.lock().ok()?.clone()
    }

    /// Whether its poll thread still runs (false once it has stopped,
    /// after a shutdown or because its runtime went away).
    pub fn is_running(&self) -> bool {
        self.0.poll_alive.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Not waited for here (drop cannot await): the subscribers shut
        // down on their own threads.
        self.token.cancel();
    }
}

/// Starts a graceful shutdown of a [`Running`] app from anywhere.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    pub(super) token: CancellationToken,
}

impl ShutdownHandle {
    /// Stops fetching; in-flight handlers get up to `shutdown_timeout` to finish.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Running {
    /// A handle that starts the shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.token.clone(),
        }
    }

    /// The bootstrap servers in use (the embedded cluster's, if embedded).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The embedded cluster, when the brokers are `embedded`.
    pub fn embedded(&self) -> Option<&EmbeddedCluster> {
        self.embedded.as_ref()
    }

    fn stats_of(&self, name: &str) -> Option<&Stats> {
        self.runners.iter().find(|r| r.name == name).map(|r| &*r.stats)
    }

    /// A handle on the live counters and partition state of the subscriber
    /// named `name` that stays usable after this `Running` has moved (into
    /// [`Running::run_until_signal`], say).
    pub fn stats_handle(&self, name: &str) -> Option<StatsHandle> {
        self.runners
            .iter()
            .find(|r| r.name == name)
            .map(|r| StatsHandle(r.stats.clone()))
    }

    /// Counters of the subscriber named `name` (its partition state is on
    /// [`Running::stats_handle`]).
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        self.stats_of(name).map(Stats::snapshot)
    }

    /// Counters of all subscribers, summed.
    pub fn total_stats(&self) -> StatsSnapshot {
        self.runners
            .iter()
            .map(|r| r.stats.snapshot())
            .fold(StatsSnapshot::default(), std::ops::Add::add)
    }

    /// Shuts down gracefully: stops fetching, waits up to each subscriber's
    /// `shutdown_timeout` for in-flight handlers, commits, and leaves the
    /// group, then runs the stop hooks. Returns when every subscriber has
    /// stopped and the hooks have run, and at the latest [`SHUTDOWN_MARGIN`]
    /// / 2 after the longest `shutdown_timeout`.
    pub async fn shutdown(self) -> Option<EmbeddedCluster> {
        self.token.cancel();
        self.wait().await
    }

    /// Waits until every subscriber has stopped: after a shutdown began, or
    /// because one stopped on its own (a fatal consumer error, or its
    /// runtime went away; the others are then shut down), then runs the
    /// stop hooks. From the moment a shutdown began, everything (the
    /// subscribers' drain, final commit and close, the stop hooks, the HTTP
    /// endpoint) shares one deadline, [`SHUTDOWN_MARGIN`] / 2 after the
    /// longest `shutdown_timeout`: what still runs then is left behind
    /// (a stop hook is dropped, and that is logged). Returns the embedded
    /// cluster, if any, so a caller can still inspect it.
    pub async fn wait(self) -> Option<EmbeddedCluster> {
        self.finish().await.0
    }

    /// [`Running::wait`], and why the app did not end cleanly: a subscriber
    /// that stopped on its own (the first in start order), else the first
    /// stop hook that failed or ran out of time.
    pub(super) async fn finish(mut self) -> (Option<EmbeddedCluster>, Result<(), Error>) {
        let runners = std::mem::take(&mut self.runners);
        // A subscriber that stops on its own (its poll thread has written
        // why into its stats) shuts the app down.
        let ends = runners.into_iter().map(|r| {
            let token = self.token.clone();
            async move {
                let reason = match r.done.await {
                    Ok(Ok(())) => return,
                    Ok(Err(why)) => why,
                    Err(_) => {
                        let why = "its poll thread ended without a word".to_owned();
                        if let Ok(mut s) = r.stats.stopped_because.lock() {
                            s.get_or_insert_with(|| why.clone());
                        }
                        why
                    }
                };
                if !token.is_cancelled() {
                    tracing::error!(
                        subscriber = r.name,
                        "a subscriber stopped on its own ({reason}): shutting the app down"
                    );
                    token.cancel();
                }
            }
        });
        let all_stopped = futures_util::future::join_all(ends);
        tokio::pin!(all_stopped);
        let stopped = tokio::select! {
            _ = &mut all_stopped => true,
            () = self.token.cancelled() => false,
        };
        // One deadline for what is left of the shutdown, from its start.
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout + SHUTDOWN_MARGIN / 2;
        if !stopped && tokio::time::timeout_at(deadline, &mut all_stopped).await.is_err() {
            let left: Vec<&str> = self
                .watched
                .iter()
                .filter(|w| w.stats.poll_alive.load(std::sync::atomic::Ordering::Relaxed))
                .map(|w| w.name.as_str())
                .collect();
            tracing::warn!(
                subscribers = ?left,
                "shutdown: not stopped within shutdown_timeout (a commit or a close that does not return); not waiting for them"
            );
        }
        let mut failed = self.watched.iter().find_map(|w| {
            let reason = w.stats.stopped_because.lock().ok()?.clone()?;
            Some(Error::SubscriberFailed {
                subscriber: w.name.clone(),
                reason,
            })
        });
        // After the drain and the final commits: close what the state holds,
        // in what is left of the shutdown's time.
        for hook in std::mem::take(&mut self.stop_hooks) {
            let error: BoxError = match tokio::time::timeout_at(deadline, hook(self.setup.clone())).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => format!(
                    "still running at the shutdown's deadline ({:?} after it began: the longest shutdown_timeout and half of SHUTDOWN_MARGIN); dropped",
                    self.shutdown_timeout + SHUTDOWN_MARGIN / 2
                )
                .into(),
            };
            tracing::error!(error = %crate::policy::error_chain(&*error), "shutdown hook failed");
            failed = failed.or(Some(Error::StopHook(error)));
        }
        // Health answered "shutting down" while the handlers drained; now
        // that everything is committed and closed, the endpoint goes too
        // (requests still open at the deadline are cut).
        if let Some(mut http) = self.http.take() {
            http.stop.cancel();
            if tokio::time::timeout_at(deadline, &mut http.task).await.is_err() {
                http.task.abort();
            }
        }
        // From here no connection failure is news (the watcher says the
        // same when it stops; this does not wait for it): a producer a
        // handler still holds may outlive the embedded cluster.
        if let Some(w) = self.watched.first() {
            w.cluster.close();
        }
        (self.embedded.take(), failed.map_or(Ok(()), Err))
    }

    /// The topics and (prefixed) group of the subscriber named `name`.
    pub(crate) fn subscriber_topics(&self, name: &str) -> Option<(Vec<String>, String)> {
        self.watched
            .iter()
            .find(|w| w.name == name)
            .map(|w| (w.topics.clone(), w.group.clone()))
    }

    /// Liveness and readiness of every subscriber, and why not.
    pub fn health(&self) -> Health {
        health::health(&self.watched, &self.thresholds)
    }

    /// The metrics in Prometheus text format, as `/metrics` serves them.
    pub fn metrics_text(&self) -> Result<String, Error> {
        health::metrics_text(&health::registry(self.watched.clone(), self.thresholds))
    }

    /// Where the HTTP endpoint listens, when [`App::http`](crate::App::http) (`--http`) is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local)
    }
}

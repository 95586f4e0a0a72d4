//! The application: collects subscribers, connects them to a cluster (or the
//! embedded one), runs them, and shuts them down gracefully.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Cli, DEFAULT_BROKERS, EMBEDDED};
use crate::embedded::EmbeddedCluster;
use crate::engine::{self, Runner};
use crate::health::{self, Health, HealthThresholds, Watched};
use crate::stats::{PartitionPause, Stats, StatsSnapshot, StoppedPartition};
use crate::subscriber::Subscriber;
use crate::watch::{self, ClusterWatch};
use crate::Error;

/// Builds and starts a set of subscribers.
///
/// `kconc_runtime::main!()` uses it with every `#[subscriber]` of the program;
/// programs with their own `main` and tests use it directly:
///
/// ```no_run
/// # async fn f() -> Result<(), kconc_runtime::Error> {
/// use kconc_runtime::{App, Message, Subscriber};
/// let app = App::from_registry()
///     .brokers("localhost:9092")
///     .subscriber(Subscriber::new("audit", ["orders"], "audit", |m: Message| async move {
///         println!("{}", m.offset());
///     }));
/// app.run().await // until SIGINT/SIGTERM
/// # }
/// ```
#[derive(Default)]
pub struct App {
    brokers: Option<String>,
    group_prefix: Option<String>,
    /// Set in code; every subscriber's own properties override them.
    properties: Vec<(String, String)>,
    /// From the file, the environment and flags; override everything in code.
    run_properties: Vec<(String, String)>,
    subscribers: Vec<Subscriber>,
    only: Vec<String>,
    embedded_partitions: Option<i32>,
    /// A bad run-time setting found by `configure`, reported by `start`.
    config_error: Option<String>,
    /// Where to serve /healthz, /readyz and /metrics, if anywhere.
    http: Option<String>,
    thresholds: HealthThresholds,
    /// Start even when a subscribed topic does not exist, and wait for it.
    wait_for_topics: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("brokers", &self.brokers)
            .field("group_prefix", &self.group_prefix)
            .field("properties", &crate::secret::Redacted(&self.properties))
            .field("run_properties", &crate::secret::Redacted(&self.run_properties))
            .field("subscribers", &self.subscribers)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An application with no subscribers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An application with every subscriber registered by `#[subscriber]`.
    pub fn from_registry() -> Self {
        Self {
            subscribers: crate::registry::registered(),
            ..Self::default()
        }
    }

    /// Applies the run-time configuration of a generated `main`: the
    /// `--config` file, the `KCONC_*` environment variables and the flags,
    /// each overriding the one before and all of them what was set in code
    /// (see [`config::resolve`]).
    ///
    /// A bad setting (unreadable file, malformed line, unknown `KCONC_*`
    /// variable, property librdkafka refuses) is kept and returned by
    /// [`App::start`], naming the setting and where it came from.
    pub fn configure(self, cli: &Cli) -> Self {
        let settings = config::resolve_from_process(cli);
        self.apply(cli, settings)
    }

    /// [`App::configure`] with the environment variables given, not read
    /// from the process: for tests and programs that build their own.
    pub fn configure_with_env<I>(self, cli: &Cli, env: I) -> Self
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let file = match &cli.config {
            Some(path) => config::read_properties_file(path),
            None => Ok(Vec::new()),
        };
        let settings = file.and_then(|file| config::resolve(cli, &file, env));
        self.apply(cli, settings)
    }

    fn apply(mut self, cli: &Cli, settings: Result<config::RunSettings, Error>) -> Self {
        match settings {
            Ok(s) => {
                if let Some(b) = s.brokers {
                    self.brokers = Some(b);
                }
                if let Some(p) = s.group_prefix {
                    self.group_prefix = Some(p);
                }
                self.run_properties = config::merge_properties(&[&self.run_properties, &s.properties]);
            }
            Err(Error::Config(e)) => self.config_error = self.config_error.or(Some(e)),
            Err(e) => self.config_error = self.config_error.or(Some(e.to_string())),
        }
        for set in &cli.set {
            if let Err(e) = self.override_setting(set) {
                self.config_error = self.config_error.or(Some(format!("--set `{set}`: {e}")));
            }
        }
        self.only.extend(cli.only.iter().cloned());
        if let Some(addr) = &cli.http {
            self.http = Some(addr.clone());
        }
        if cli.wait_for_topics {
            self.wait_for_topics = true;
        }
        self.embedded_partitions = Some(cli.embedded_partitions);
        self
    }

    /// Applies one `--set NAME.KEY=VALUE` to the subscribers added so far.
    fn override_setting(&mut self, set: &str) -> Result<(), String> {
        let (target, value) = set.split_once('=').ok_or("expected NAME.KEY=VALUE")?;
        let (name, key) = target.trim().rsplit_once('.').ok_or("expected NAME.KEY=VALUE")?;
        let mut matched = false;
        for s in self.subscribers.iter_mut().filter(|s| name == "*" || s.name == name) {
            s.set(key, value)?;
            matched = true;
        }
        if !matched {
            let known: Vec<&str> = self.subscribers.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("no subscriber is named `{name}` (known: {})", known.join(", ")));
        }
        Ok(())
    }

    /// Serves `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
    /// (Prometheus text) over HTTP on `addr` (`127.0.0.1:9090`; port 0 picks
    /// one, see [`Running::http_addr`]) until the app has shut down.
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// When health calls a subscriber unhealthy (see [`HealthThresholds`]).
    pub fn health_thresholds(mut self, thresholds: HealthThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Prepends `prefix` to every subscriber's consumer group (`staging-`
    /// turns `billing` into `staging-billing`), for the consumer and in logs.
    #[must_use]
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = Some(prefix.into());
        self
    }

    /// Kafka bootstrap servers, or `"embedded"` for the in-process mock cluster.
    #[must_use]
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.brokers = Some(brokers.into());
        self
    }

    /// The brokers this app will use unless told otherwise (a `main` that
    /// wants `embedded` by default calls this before [`App::configure`]).
    #[must_use]
    pub fn default_brokers(mut self, brokers: impl Into<String>) -> Self {
        if self.brokers.is_none() {
            self.brokers = Some(brokers.into());
        }
        self
    }

    /// Sets a librdkafka property for every subscriber's consumer.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// Adds a subscriber built in code.
    #[must_use]
    pub fn subscriber(mut self, subscriber: Subscriber) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// Runs only the subscribers with these names.
    #[must_use]
    pub fn only<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.only.extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether to start when a subscribed topic does not exist, and wait
    /// for it (`--wait-for-topics`, `KCONC_WAIT_FOR_TOPICS`). By default
    /// [`App::start`] fails naming the topic when the cluster answers that
    /// it does not exist (a typo, or a topic not created yet by its
    /// owner), unless `allow.auto.create.topics=true` lets the consumer
    /// create it. Either way, a topic missing while running (not there
    /// yet, or deleted) is named by readiness and in the log until it
    /// exists. When the cluster does not answer within a few seconds at
    /// start, kconc starts and reports that instead.
    #[must_use]
    pub fn wait_for_topics(mut self, wait: bool) -> Self {
        self.wait_for_topics = wait;
        self
    }

    /// Partitions of each topic created on the embedded cluster (default 4).
    #[must_use]
    pub fn embedded_partitions(mut self, n: i32) -> Self {
        self.embedded_partitions = Some(n);
        self
    }

    /// The subscribers that will run, after `only`.
    pub fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.subscribers
            .iter()
            .filter(|s| self.only.is_empty() || self.only.iter().any(|n| n == &s.name))
    }

    /// The consumer group `subscriber` joins: its group after the group prefix.
    pub fn group_of(&self, subscriber: &Subscriber) -> String {
        format!("{}{}", self.group_prefix.as_deref().unwrap_or(""), subscriber.group)
    }

    /// The bootstrap servers [`App::start`] will use: the configured ones,
    /// else `localhost:9092`; `"embedded"` means the in-process mock cluster.
    pub fn brokers_in_use(&self) -> &str {
        self.brokers.as_deref().map_or(DEFAULT_BROKERS, str::trim)
    }

    /// What `--list` prints ([`App::describe_subscribers`]), or the
    /// configuration error [`App::start`] would report: a listing shows the
    /// effective configuration, so a bad one fails here too.
    pub fn listing(&self) -> Result<String, Error> {
        self.preflight()?;
        if let Some(addr) = &self.http {
            // Checked as a run checks it (the listener is closed at once).
            health::bind(addr)?;
        }
        Ok(self.describe_subscribers())
    }

    /// Every check [`App::start`] makes before it connects to anything (or
    /// binds the HTTP endpoint): the run-time configuration, `only`, each
    /// subscriber's settings and properties, names given twice. Returns the
    /// subscribers that will run.
    fn preflight(&self) -> Result<Vec<&Subscriber>, Error> {
        if let Some(e) = &self.config_error {
            return Err(Error::Config(e.clone()));
        }
        for (i, a) in self.subscribers.iter().enumerate() {
            if let Some(b) = self.subscribers[i + 1..].iter().find(|b| b.name == a.name) {
                let origin = |s: &Subscriber| s.origin.clone().unwrap_or_else(|| "one built in code".to_owned());
                return Err(Error::Config(format!(
                    "two subscribers are named `{}`: {} and {}; give each its own name \
                     (`name = \"..\"` in #[subscriber(..)], or Subscriber::new's first argument)",
                    a.name,
                    origin(a),
                    origin(b)
                )));
            }
        }
        if let Some(missing) = self
            .only
            .iter()
            .find(|n| !self.subscribers.iter().any(|s| &&s.name == n))
        {
            let known: Vec<&str> = self.subscribers.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::Config(format!(
                "--only `{missing}`: no subscriber has that name (known: {})",
                known.join(", ")
            )));
        }
        let subs: Vec<&Subscriber> = self.subscribers().collect();
        if subs.is_empty() {
            return Err(Error::Config(
                "no subscribers to run: add #[subscriber] handlers or App::subscriber".into(),
            ));
        }
        for s in &subs {
            s.validate()?;
        }
        config::check_code_properties(&self.properties, &subs)?;
        if self.brokers_in_use().is_empty() {
            return Err(Error::Config("`brokers` (KCONC_BROKERS / --brokers) is empty".into()));
        }
        Ok(subs)
    }

    /// The table `--list` prints: one row per subscriber that would run
    /// (after `only`), with its name, topics, consumer group (after the
    /// prefix), concurrency and ordering. Never shows a property.
    pub fn describe_subscribers(&self) -> String {
        let header = [
            "NAME",
            "TOPICS",
            "GROUP",
            "CONCURRENCY",
            "ORDERING",
            "RETRIES",
            "ON_ERROR",
        ]
        .map(str::to_owned);
        let rows: Vec<[String; 7]> = self
            .subscribers()
            .map(|s| {
                [
                    s.name.clone(),
                    s.topics.join(","),
                    self.group_of(s),
                    s.concurrency.to_string(),
                    s.ordering.to_string(),
                    s.policy.retries.to_string(),
                    s.policy.on_error.to_string(),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no subscribers\n".to_owned();
        }
        let mut widths = [0usize; 7];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Starts every subscriber and returns at once. Must be called within a
    /// tokio runtime (handlers run on it). Fails, naming the setting, on
    /// invalid configuration; with `embedded` brokers it first starts the mock
    /// cluster and creates the subscribed topics on it.
    pub fn start(self) -> Result<Running, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let subs = self.preflight()?;
        // Bound before anything connects, so a bad or busy address fails
        // with nothing to tear down.
        let listener = match &self.http {
            Some(addr) => Some(health::bind(addr)?),
            None => None,
        };
        // The prefixed group is the one the consumer joins, commits under and logs.
        let subs: Vec<Subscriber> = subs
            .into_iter()
            .map(|s| {
                let mut s = s.clone();
                s.group = self.group_of(&s);
                s
            })
            .collect();
        let brokers = self.brokers_in_use().to_owned();
        let (embedded, bootstrap) = if brokers == EMBEDDED {
            let cluster = EmbeddedCluster::start(1)?;
            let partitions = self.embedded_partitions.unwrap_or(4);
            for s in &subs {
                for t in &s.topics {
                    cluster.create_topic(t, partitions)?;
                }
            }
            tracing::warn!(
                bootstrap = cluster.bootstrap_servers(),
                "EMBEDDED BROKER: using librdkafka's in-process mock cluster, NOT a real Kafka cluster; \
                 data lives in memory and vanishes when the process exits. Set --brokers or KCONC_BROKERS for a real one."
            );
            let b = cluster.bootstrap_servers().to_owned();
            (Some(cluster), b)
        } else {
            (None, brokers)
        };
        let configs: Vec<rdkafka::ClientConfig> = subs
            .iter()
            .map(|s| config::consumer_config(&bootstrap, s, &self.properties, &self.run_properties))
            .collect();
        let cluster = ClusterWatch::new(&bootstrap);
        if !self.wait_for_topics {
            check_topics_exist(&subs, &configs, &cluster)?;
        }
        let token = CancellationToken::new();
        let mut runners = Vec::new();
        for (s, cfg) in subs.iter().zip(configs.iter().cloned()) {
            match engine::start(s, cfg, token.child_token(), runtime.clone(), cluster.clone()) {
                Ok(r) => runners.push(r),
                Err(e) => {
                    token.cancel();
                    return Err(e);
                }
            }
        }
        let watched: Vec<Watched> = runners
            .iter()
            .zip(&subs)
            .map(|(r, s)| Watched {
                name: r.name.clone(),
                group: s.group.clone(),
                stats: r.stats.clone(),
                cluster: cluster.clone(),
            })
            .collect();
        let topics: Vec<watch::Watched> = runners
            .iter()
            .zip(&subs)
            .map(|(r, s)| watch::Watched {
                name: r.name.clone(),
                topics: s.topics.clone(),
                stats: r.stats.clone(),
            })
            .collect();
        if let Some(first) = configs.into_iter().next() {
            watch::spawn(first, cluster, topics, token.clone(), &runtime);
        }
        let http = match listener {
            None => None,
            Some(listener) => {
                let stop = CancellationToken::new();
                match health::serve(listener, watched.clone(), self.thresholds, stop.clone(), &runtime) {
                    Ok((local, task)) => Some(HttpServer { local, task, stop }),
                    Err(e) => {
                        token.cancel();
                        return Err(e);
                    }
                }
            }
        };
        let shutdown_timeout = subs.iter().map(|s| s.shutdown_timeout).max().unwrap_or_default();
        Ok(Running {
            token,
            runners,
            shutdown_timeout,
            embedded,
            bootstrap,
            watched,
            thresholds: self.thresholds,
            http,
        })
    }

    /// Starts every subscriber and runs until SIGINT or SIGTERM, then shuts
    /// down gracefully (a second signal exits at once).
    pub async fn run(self) -> Result<(), Error> {
        self.start()?.run_until_signal().await
    }
}

impl Running {
    /// Runs until SIGINT or SIGTERM (or a [`ShutdownHandle::shutdown`]),
    /// then shuts down gracefully; a second signal exits at once. What
    /// [`App::run`] does after [`App::start`], for a program that wants the
    /// [`Running`] handle (its stats, its assignment) meanwhile.
    ///
    /// Returns once every subscriber has stopped, or at the latest
    /// [`SHUTDOWN_MARGIN`] after the longest `shutdown_timeout` since the
    /// shutdown began. If it cannot listen for signals, it shuts down
    /// first and then returns the error.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let signals = match crate::signal::Signals::listen() {
            Ok(signals) => signals,
            Err(e) => {
                self.shutdown().await;
                return Err(e);
            }
        };
        tokio::spawn(signals.serve(self.token.clone()));
        self.wait().await;
        Ok(())
    }
}

/// The start-up check of [`App::wait_for_topics`]: fails naming the first
/// subscribed topic the cluster says does not exist, unless its
/// subscriber's consumer may create it (`allow.auto.create.topics`).
fn check_topics_exist(
    subs: &[Subscriber],
    configs: &[rdkafka::ClientConfig],
    cluster: &std::sync::Arc<ClusterWatch>,
) -> Result<(), Error> {
    let mut topics: Vec<String> = subs
        .iter()
        .zip(configs)
        .filter(|(_, c)| c.get("allow.auto.create.topics") != Some("true"))
        .flat_map(|(s, _)| s.topics.iter().cloned())
        .collect();
    topics.sort();
    topics.dedup();
    let Some(config) = configs.first() else {
        return Ok(());
    };
    if topics.is_empty() {
        return Ok(());
    }
    let Some(missing) = watch::missing_at_start(config, cluster, &topics) else {
        return Ok(());
    };
    match missing.first() {
        None => Ok(()),
        Some(topic) => {
            let names: Vec<&str> = subs
                .iter()
                .filter(|s| s.topics.contains(topic))
                .map(|s| s.name.as_str())
                .collect();
            Err(Error::Config(format!(
                "topic `{topic}` (subscribed by {}) does not exist on the cluster at {}: create it, or start \
                 with --wait-for-topics (KCONC_WAIT_FOR_TOPICS=true, App::wait_for_topics) to wait for it",
                names.join(", "),
                cluster.brokers()
            )))
        }
    }
}

/// How much longer than the longest `shutdown_timeout` of its subscribers
/// [`Running::shutdown`] (and so a program's exit) may take after a
/// shutdown began: the subscribers' own drain, final commit and close keep
/// within their `shutdown_timeout`, and what has not ended by then (a
/// consumer whose close does not return, a commit the coordinator never
/// answers) is left behind.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// Subscribers that are running.
///
/// Dropping it without [`Running::shutdown`] starts a shutdown too (its
/// consumers drain, commit and leave their groups on their own threads):
/// no consumer keeps consuming once its owner is gone.
#[derive(Debug)]
pub struct Running {
    token: CancellationToken,
    runners: Vec<Runner>,
    /// The longest `shutdown_timeout` of the subscribers.
    shutdown_timeout: Duration,
    embedded: Option<EmbeddedCluster>,
    bootstrap: String,
    watched: Vec<Watched>,
    thresholds: HealthThresholds,
    http: Option<HttpServer>,
}

/// The HTTP endpoint's task, closed after the subscribers have stopped.
#[derive(Debug)]
struct HttpServer {
    local: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
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
    token: CancellationToken,
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

    /// Counters of the subscriber named `name`.
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        self.stats_of(name).map(Stats::snapshot)
    }

    /// The partitions of the subscriber named `name` that backpressure has
    /// paused, now or before (empty if none ever was).
    pub fn partition_pauses(&self, name: &str) -> Vec<PartitionPause> {
        self.stats_of(name).map(Stats::pauses).unwrap_or_default()
    }

    /// The partitions assigned to the subscriber named `name` now, as
    /// (topic, partition), sorted.
    pub fn assigned_partitions(&self, name: &str) -> Vec<(String, i32)> {
        self.stats_of(name).map(Stats::assigned).unwrap_or_default()
    }

    /// The partitions of the subscriber named `name` that the error policy
    /// has stopped (`on_error = stop`), with the offset and the error.
    pub fn stopped_partitions(&self, name: &str) -> Vec<StoppedPartition> {
        self.stats_of(name).map(Stats::stopped_partitions).unwrap_or_default()
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
    /// group. Returns when every subscriber has stopped, and at the latest
    /// [`SHUTDOWN_MARGIN`] after the longest `shutdown_timeout`.
    pub async fn shutdown(self) -> Option<EmbeddedCluster> {
        self.token.cancel();
        self.wait().await
    }

    /// Waits until every subscriber has stopped: on their own (the runtime
    /// they run on went away), or after a shutdown began, at the latest
    /// [`SHUTDOWN_MARGIN`] after the longest `shutdown_timeout` from then.
    /// Returns the embedded cluster, if any, so a caller can still inspect
    /// it.
    pub async fn wait(mut self) -> Option<EmbeddedCluster> {
        let runners = std::mem::take(&mut self.runners);
        let all_stopped = async move {
            for r in runners {
                let _ = r.done.await;
            }
        };
        tokio::pin!(all_stopped);
        tokio::select! {
            () = &mut all_stopped => {}
            () = self.token.cancelled() => {
                let limit = self.shutdown_timeout + SHUTDOWN_MARGIN / 2;
                if tokio::time::timeout(limit, &mut all_stopped).await.is_err() {
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
            }
        }
        // Health answered "shutting down" while the handlers drained; now
        // that everything is committed and closed, the endpoint goes too.
        if let Some(http) = self.http.take() {
            http.stop.cancel();
            let _ = http.task.await;
        }
        self.embedded.take()
    }

    /// Liveness and readiness of every subscriber, and why not.
    pub fn health(&self) -> Health {
        health::health(&self.watched, &self.thresholds)
    }

    /// The metrics in Prometheus text format, as `/metrics` serves them.
    pub fn metrics_text(&self) -> Result<String, Error> {
        health::metrics_text(&self.watched, &self.thresholds)
    }

    /// Where the HTTP endpoint listens, when [`App::http`] (`--http`) is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.local)
    }
}

/// The `main` generated by `kconc_runtime::main!()`.
pub(crate) fn run_main(default_brokers: Option<&str>) -> std::process::ExitCode {
    let cli = Cli::from_args_with_default_brokers(default_brokers);
    if let Err(e) = config::init_tracing_with(cli.log.as_deref()) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut app = App::from_registry();
    if let Some(b) = default_brokers {
        app = app.default_brokers(b);
    }
    let app = app.configure(&cli);
    if cli.list {
        return match app.listing() {
            Ok(table) => {
                print!("{table}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(app.run());
    // Handlers still running were dropped at the shutdown timeout; a
    // worker thread blocked in one must not hold the exit up.
    runtime.shutdown_timeout(SHUTDOWN_MARGIN / 2);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

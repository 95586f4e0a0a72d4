//! The application: collects subscribers, connects them to a cluster (or the
//! embedded one), runs them, and shuts them down gracefully.
//!
//! - `mod.rs`: the builder ([`App`]) and what `--list` shows;
//! - `start`: [`App::start`], every check before anything connects, then
//!   the engines, the watcher and the HTTP endpoint;
//! - `running`: [`Running`] and its handles, counters, health and shutdown;
//! - `hooks`: start-up and shutdown hooks, and the [`Setup`] they get;
//! - `run_main`: the `main` that `main!()` generates;
//! - `produce`: its `produce` subcommand.

mod hooks;
mod produce;
mod run_main;
mod running;
mod start;

pub use hooks::Setup;

pub(crate) use run_main::run_main;
pub use run_main::MainOptions;
pub use running::{Running, ShutdownHandle, StatsHandle, SHUTDOWN_MARGIN};

use crate::config::{self, Cli, DEFAULT_BROKERS};
use crate::health::{self, HealthThresholds};
use crate::state::{StateRequirement, States};

use self::hooks::{StartHook, StopHook};
use crate::error::Error;
use crate::subscriber::Subscriber;

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
    /// The group protocol every subscriber gets, added before or after.
    group_protocol: Option<crate::GroupProtocol>,
    only: Vec<String>,
    embedded_partitions: Option<i32>,
    /// A bad run-time setting found by `configure`, reported by `start`.
    config_error: Option<String>,
    /// Where to serve /healthz, /readyz and /metrics, if anywhere.
    http: Option<String>,
    thresholds: HealthThresholds,
    /// Start even when a subscribed topic does not exist, and wait for it.
    wait_for_topics: bool,
    /// The values handlers take as `State<T>`.
    states: States,
    /// The state types start-up hooks will build.
    promised_states: Vec<StateRequirement>,
    start_hooks: Vec<StartHook>,
    stop_hooks: Vec<StopHook>,
    /// More topics to create on the embedded cluster.
    embedded_topics: Vec<String>,
    /// Where to write the embedded cluster's address.
    embedded_address_file: Option<std::path::PathBuf>,
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
    /// (the flags and variables are [`Cli`]'s).
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
                if let Some(id) = s.instance_id {
                    for sub in &mut self.subscribers {
                        sub.settings.instance_id = Some(id.clone());
                    }
                }
                if let Some(protocol) = s.group_protocol {
                    self = self.group_protocol(protocol);
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
        if let Some(path) = &cli.embedded_address_file {
            self.embedded_address_file = Some(path.clone());
        }
        self
    }

    /// Changes a setting of the subscribers added so far, as `--set
    /// NAME.KEY=VALUE` does: `app.set("billing.retries", 0)`,
    /// `app.set("*.ordering", "key")` (`*` is every subscriber). The keys
    /// and values are `--set`'s (see `--help`). A bad one is reported by
    /// [`App::start`], as a bad `--set` is.
    #[must_use]
    pub fn set(mut self, setting: &str, value: impl std::fmt::Display) -> Self {
        if let Err(e) = self.override_setting(&format!("{setting}={value}")) {
            self.config_error = self
                .config_error
                .or(Some(format!("App::set(\"{setting}\", \"{value}\"): {e}")));
        }
        self
    }

    /// Applies one `--set NAME.KEY=VALUE` to the subscribers added so far.
    pub(crate) fn override_setting(&mut self, set: &str) -> Result<(), String> {
        let (target, value) = set.split_once('=').ok_or("expected NAME.KEY=VALUE")?;
        let Some((name, key)) = target.trim().rsplit_once('.') else {
            // A key without the subscriber's name: say which it could be.
            let key = target.trim();
            let mut could: Vec<String> = self
                .subscribers
                .iter()
                .map(|s| format!("`{}.{key}={value}`", s.name))
                .collect();
            could.push(format!("`*.{key}={value}` for all"));
            return Err(format!("expected NAME.KEY=VALUE: {}", could.join(", ")));
        };
        let mut matched = false;
        for s in self.subscribers.iter_mut().filter(|s| name == "*" || s.name == name) {
            s.set(key, value).map_err(|e| e.to_string())?;
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

    /// The consumer group protocol of every subscriber, those added before
    /// and after (overriding their own `group_protocol`), as
    /// `--group-protocol` sets it at run time; see [`crate::GroupProtocol`]
    /// and the README's "Group protocols".
    #[must_use]
    pub fn group_protocol(mut self, protocol: crate::GroupProtocol) -> Self {
        self.group_protocol = Some(protocol);
        for sub in &mut self.subscribers {
            sub.settings.group_protocol = protocol;
        }
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
    pub fn subscriber(mut self, mut subscriber: Subscriber) -> Self {
        if let Some(protocol) = self.group_protocol {
            subscriber.settings.group_protocol = protocol;
        }
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

    /// Provides `value` to every handler that takes a
    /// [`State<T>`](crate::State) of its type (one value per type; a second
    /// call for the same type replaces the first). A handler taking a
    /// `State<T>` the app does not provide fails [`App::start`], naming the
    /// handler and the type.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
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

    /// Creates `topic` on the embedded cluster too (the subscribed topics,
    /// and their dead-letter and reply topics, are created anyway); no
    /// effect on a real cluster.
    #[must_use]
    pub fn embedded_topic(mut self, topic: impl Into<String>) -> Self {
        self.embedded_topics.push(topic.into());
        self
    }

    /// Partitions of each topic created on the embedded cluster (default 4).
    #[must_use]
    pub fn embedded_partitions(mut self, n: i32) -> Self {
        self.embedded_partitions = Some(n);
        self
    }

    /// On the embedded cluster, writes its bootstrap address to `path` once
    /// its topics exist (and removes it when the cluster stops), for
    /// another process to send to it (`--embedded-address-file`).
    #[must_use]
    pub fn embedded_address_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.embedded_address_file = Some(path.into());
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

    /// What `--list` prints (a table of the subscribers that would run), or the
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

    /// The AsyncAPI 3.0 document of the subscribers that would run (after
    /// `only`, `--set` and the group prefix), titled `title`: what
    /// `--asyncapi` prints and `/asyncapi.json` serves. A bad configuration
    /// fails here as [`App::start`] would fail. Connects to nothing.
    pub fn asyncapi(&self, title: &str) -> Result<serde_json::Value, Error> {
        let subs = self.preflight()?;
        Ok(self.asyncapi_of(title, &subs))
    }

    fn asyncapi_of(&self, title: &str, subs: &[&Subscriber]) -> serde_json::Value {
        let with_groups: Vec<(&Subscriber, String)> = subs.iter().map(|s| (*s, self.group_of(s))).collect();
        crate::asyncapi::document(title, self.brokers_in_use(), &with_groups)
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
            let provided = |r: &&StateRequirement| self.states.has(r) || self.promised_states.contains(r);
            if let Some(r) = s.required_states.iter().find(|r| !provided(r)) {
                return Err(Error::MissingState {
                    subscriber: s.name.clone(),
                    type_name: r.type_name,
                });
            }
        }
        // Two members of one group in one app split a shared topic's
        // partitions between them: each handler would see only some of its
        // messages, and the others would be committed past it.
        for (i, a) in subs.iter().enumerate() {
            for b in &subs[i + 1..] {
                if let Some(topic) = (a.group == b.group)
                    .then(|| a.topics.iter().find(|t| b.topics.contains(t)))
                    .flatten()
                {
                    return Err(Error::Config(format!(
                        "subscribers `{}` and `{}` are both in group `{}` and both subscribe to `{topic}`: \
                         each would get only some of its partitions (and the other's are committed past it); \
                         give each its own group, or handle the topic in one subscriber",
                        a.name, b.name, a.group
                    )));
                }
            }
        }
        config::check_code_properties(&self.properties, &subs)?;
        config::check_group_protocol(&self.properties, &self.run_properties, &subs)?;
        if self.brokers_in_use().is_empty() {
            return Err(Error::Config("`brokers` (KCONC_BROKERS / --brokers) is empty".into()));
        }
        Ok(subs)
    }

    /// The table `--list` prints: one row per subscriber that would run
    /// (after `only`), with its name, topics, consumer group (after the
    /// prefix), concurrency and ordering. Never shows a property.
    fn describe_subscribers(&self) -> String {
        let header = [
            "NAME",
            "TOPICS",
            "GROUP",
            "CONCURRENCY",
            "ORDERING",
            "RETRIES",
            "ON_ERROR",
            "HANDLER_TIMEOUT",
            "REPLY",
        ]
        .map(str::to_owned);
        let rows: Vec<[String; 9]> = self
            .subscribers()
            .map(|s| {
                [
                    s.name.clone(),
                    s.topics.join(","),
                    self.group_of(s),
                    s.settings.concurrency.to_string(),
                    s.settings.ordering.to_string(),
                    s.settings.retries.to_string(),
                    s.settings.on_error.to_string(),
                    s.settings
                        .handler_timeout
                        .map_or("none".to_owned(), |d| format!("{d:?}")),
                    s.settings.reply.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no subscribers\n".to_owned();
        }
        let mut widths = [0usize; 9];
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
}

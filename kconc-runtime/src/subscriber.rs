//! Subscribers: a handler plus the static settings it runs with, whether it
//! came from `#[subscriber]` (through the registry) or was built in code.

use std::time::Duration;

use crate::error::SettingError;
use crate::handler::{Handler, IntoHandlerResult};
use crate::message::Message;
use crate::policy::{ErrorPolicy, OnError};

/// Default number of handlers running at once per subscriber.
pub(crate) const DEFAULT_CONCURRENCY: usize = 10;
/// Default number of finished messages after which offsets are committed.
pub(crate) const DEFAULT_COMMIT_BATCH_SIZE: usize = 100;
/// Default longest time finished offsets wait before they are committed.
pub(crate) const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time shutdown waits for in-flight handlers.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time a revoke waits for the revoked partitions' in-flight handlers.
pub(crate) const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound of each partition's uncommitted window (offsets read past
/// its last committed offset).
pub(crate) const DEFAULT_MAX_UNCOMMITTED: usize = 10_000;

/// How much order a subscriber's handlers keep (guarantee 4 of the design).
///
/// Within one partition, handlers always *start* in offset order; the modes
/// differ in what may run at the same time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderingMode {
    /// Any messages run concurrently, up to `concurrency` (the default).
    #[default]
    Unordered,
    /// Messages with the same key in the same partition run one after
    /// another, in offset order; different keys run concurrently. A message
    /// without a key is its own key: it runs concurrently with everything.
    Key,
    /// Each partition's messages run one after another, in offset order;
    /// partitions run concurrently.
    Partition,
}

impl OrderingMode {
    /// The name used in `#[subscriber(ordering = "..")]` and `--list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unordered => "unordered",
            Self::Key => "key",
            Self::Partition => "partition",
        }
    }
}

impl std::fmt::Display for OrderingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OrderingMode {
    type Err = SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unordered" => Ok(Self::Unordered),
            "key" => Ok(Self::Key),
            "partition" => Ok(Self::Partition),
            other => Err(SettingError::new(
                "ordering",
                format!("unknown ordering `{other}`: use `unordered`, `key` or `partition`"),
            )),
        }
    }
}

/// Where a handler's code runs: on the tokio workers (the default), or, for
/// its first poll (the stretch up to its first `.await` that has to wait),
/// on the subscriber's poll thread.
///
/// The default, [`FirstPoll::Worker`], runs every handler inside a tokio
/// task on the runtime's workers, where everything tokio offers works and a
/// handler that blocks or computes holds up only its own worker. The other
/// two modes are an opt-in for handlers known to be short and
/// non-blocking: the poll thread runs the first poll itself, so a handler
/// that ends there costs no hand-over to a worker. Their trade-offs:
///
/// - The poll thread is the consumer's control path (rebalances, commits,
///   health): while a first poll runs, nothing else of the subscriber does.
///   A first poll that blocks (a lock, a synchronous DNS lookup,
///   `Handle::block_on`, which works there instead of panicking) stalls the
///   subscriber, and if it outlasts `max.poll.interval.ms` the member is
///   thrown out of its group. kconc cannot pre-empt it.
/// - The poll thread is not a tokio task: `tokio::task::id()` panics there,
///   task-locals set outside the handler are absent, and there is no coop
///   budget. A first poll that fails or panics on the poll thread is never
///   judged there: the message runs again, from the start, on a worker,
///   and only that run counts (so its side effects before the failure may
///   happen twice). `kconc_first_polls_rerun_on_worker_total` counts these.
/// - The waker of the first poll is not the worker's: a future must
///   register the waker of its latest poll (as the `Future` contract asks),
///   though kconc forwards wakes of the first one too.
/// - All first polls of a subscriber share one thread: CPU-bound handlers
///   get one core, whatever `concurrency` says.
///
/// Whatever the mode, no handler begins inside a rebalance callback (kept
/// partitions' messages started during a revoke go to the workers) or after
/// shutdown has begun.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FirstPoll {
    /// Every handler runs on the workers, inside a tokio task. The default.
    #[default]
    Worker,
    /// The poll thread runs every first poll (handlers that wait go on on a
    /// worker). For handlers known to be short; see the trade-offs above.
    PollThread,
    /// The poll thread runs first polls while, over a window of 64
    /// messages, none failed, at most half of the handlers had to wait and
    /// their first polls took under 20 µs on average (none over 500 µs);
    /// otherwise the workers run everything and the poll thread tries again
    /// after 256 messages, then 512, up to 65,536. A timing rule, so where
    /// a handler runs varies with load; see the trade-offs above.
    Auto,
}

impl FirstPoll {
    /// The name `--set NAME.first_poll=..` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::PollThread => "poll_thread",
            Self::Worker => "worker",
        }
    }
}

impl std::str::FromStr for FirstPoll {
    type Err = SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "poll_thread" => Ok(Self::PollThread),
            "worker" => Ok(Self::Worker),
            other => Err(SettingError::new(
                "first_poll",
                format!("unknown first_poll `{other}`: use `worker` (the default), `poll_thread` or `auto`"),
            )),
        }
    }
}

/// One consumer of one or more topics in one group, with its handler.
///
/// Built by `#[subscriber]` (through the registry) or in code
/// with [`Subscriber::new`] and the setters, for programs and tests that pass
/// closures. Every setting has a default (the README's options table lists them).
#[derive(Clone)]
pub struct Subscriber {
    pub(crate) name: String,
    pub(crate) topics: Vec<String>,
    pub(crate) group: String,
    pub(crate) concurrency: usize,
    pub(crate) ordering: OrderingMode,
    pub(crate) first_poll: FirstPoll,
    pub(crate) max_buffered: Option<usize>,
    pub(crate) max_uncommitted: usize,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) commit_batch_size: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) policy: ErrorPolicy,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) handler: Handler,
    /// Where it was declared, for errors: the `#[subscriber]` function and
    /// its file and line; `None` when built in code.
    pub(crate) origin: Option<String>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("concurrency", &self.concurrency)
            .field("ordering", &self.ordering)
            .field("first_poll", &self.first_poll)
            .field("max_buffered", &self.effective_max_buffered())
            .field("max_uncommitted", &self.max_uncommitted)
            .field("handler_timeout", &self.handler_timeout)
            .field("commit_batch_size", &self.commit_batch_size)
            .field("commit_interval", &self.commit_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("policy", &self.policy)
            .field("properties", &crate::secret::Redacted(&self.properties))
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber named `name` consuming `topics` in consumer group `group`.
    ///
    /// The handler is an async function or closure taking a [`Message`] and
    /// returning `()` or `Result<(), E>`.
    pub fn new<I, T, F, Fut, R>(name: impl Into<String>, topics: I, group: impl Into<String>, handler: F) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = R> + Send + 'static,
        R: IntoHandlerResult,
    {
        Self::with_handler(
            name.into(),
            topics.into_iter().map(Into::into).collect(),
            group.into(),
            Handler::new(handler),
        )
    }

    /// A subscriber with a handler built by [`Handler::new`] or
    /// [`Handler::with_context`] (for closures that need the [`Context`](crate::Context)).
    pub fn from_handler<I, T>(name: impl Into<String>, topics: I, group: impl Into<String>, handler: Handler) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::with_handler(
            name.into(),
            topics.into_iter().map(Into::into).collect(),
            group.into(),
            handler,
        )
    }

    pub(crate) fn with_handler(name: String, topics: Vec<String>, group: String, handler: Handler) -> Self {
        Self {
            name,
            topics,
            group,
            concurrency: DEFAULT_CONCURRENCY,
            ordering: OrderingMode::Unordered,
            first_poll: FirstPoll::Worker,
            max_buffered: None,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
            handler_timeout: None,
            commit_batch_size: DEFAULT_COMMIT_BATCH_SIZE,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
            policy: ErrorPolicy::default(),
            properties: Vec::new(),
            handler,
            origin: None,
        }
    }

    /// At most this many handlers of this subscriber run at once (default 10).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How much order the handlers keep (default [`OrderingMode::Unordered`]).
    #[must_use]
    pub fn ordering(mut self, ordering: OrderingMode) -> Self {
        self.ordering = ordering;
        self
    }

    /// Where handlers run (default [`FirstPoll::Worker`]: on the tokio
    /// workers, inside a task). See [`FirstPoll`] for the opt-in modes and
    /// their trade-offs.
    #[must_use]
    pub fn first_poll(mut self, first_poll: FirstPoll) -> Self {
        self.first_poll = first_poll;
        self
    }

    /// At most this many fetched messages wait for a free handler slot or
    /// for their key or partition to be free (default: twice `concurrency`,
    /// at least 16). When the bound is reached, reading stops while polling
    /// goes on. In `key` and `partition` ordering a partition also stops
    /// being read (is paused) when the messages it has waiting behind busy
    /// keys reach its share of the bound (`max_buffered / assigned
    /// partitions`), so one backed-up partition cannot fill the buffer and
    /// stall the others.
    #[must_use]
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = Some(n);
        self
    }

    /// At most this many offsets of one partition are read past its last
    /// committed offset (default 10,000). A partition at the bound is
    /// paused (not read, while polling goes on) until its commits catch up.
    /// It bounds, per partition, the memory of what finished above a
    /// message that has not (a stuck handler, a long retry), and what is
    /// handled again after a crash, a lost assignment or a stretch of
    /// failing commits.
    #[must_use]
    pub fn max_uncommitted(mut self, n: usize) -> Self {
        self.max_uncommitted = n;
        self
    }

    /// A handler running longer than this is dropped (cancelled at its
    /// next `.await`) and its message fails with a timeout error: retried
    /// if retries are left, then the error policy (default: none). A
    /// handler that blocks its thread without awaiting cannot be cut off.
    /// `None` turns it off.
    #[must_use]
    pub fn handler_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.handler_timeout = d.into();
        self
    }

    /// Commit once this many messages have finished since the last commit (default 100).
    #[must_use]
    pub fn commit_batch_size(mut self, n: usize) -> Self {
        self.commit_batch_size = n;
        self
    }

    /// Commit finished offsets at least this often (default 1 s).
    #[must_use]
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.commit_interval = d;
        self
    }

    /// How long shutdown waits for in-flight handlers (default 20 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// How long a revoke waits for the revoked partitions' in-flight handlers
    /// before it commits what has finished (default 10 s). Keep it well below
    /// `max.poll.interval.ms`.
    #[must_use]
    pub fn revoke_timeout(mut self, d: Duration) -> Self {
        self.revoke_timeout = d;
        self
    }

    /// Retry a failed message up to `n` more times (default 0) before the
    /// `on_error` step, waiting `backoff` doubled on each retry up to
    /// `max_backoff`, with jitter. A waiting retry holds no handler slot;
    /// its offset is not committed until it finishes, and in `key` or
    /// `partition` ordering the messages behind it with its key (or
    /// partition) wait for it.
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.policy.retries = n;
        self
    }

    /// The wait before the first retry (default 100 ms).
    #[must_use]
    pub fn backoff(mut self, d: Duration) -> Self {
        self.policy.backoff = d;
        self
    }

    /// The longest wait between retries (default 10 s).
    #[must_use]
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.policy.max_backoff = d;
        self
    }

    /// What happens after the last attempt fails (default [`OnError::Skip`]).
    #[must_use]
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.policy.on_error = on_error;
        self
    }

    /// Shorthand for `on_error(OnError::DeadLetter(topic))`.
    #[must_use]
    pub fn dead_letter(self, topic: impl Into<String>) -> Self {
        self.on_error(OnError::DeadLetter(topic.into()))
    }

    /// Sets a librdkafka property for this subscriber's consumer only; it
    /// overrides the application-wide properties.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The subscriber's name (for `#[subscriber]`, the function's path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topics it consumes.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Its consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Its ordering mode.
    pub fn ordering_mode(&self) -> OrderingMode {
        self.ordering
    }

    /// Where its handlers run.
    pub fn first_poll_mode(&self) -> FirstPoll {
        self.first_poll
    }

    pub(crate) fn effective_max_buffered(&self) -> usize {
        self.max_buffered.unwrap_or_else(|| (self.concurrency * 2).max(16))
    }

    /// Overrides one setting from text (what `--set` does); the error says
    /// what the setting accepts. Values are checked again by `App::start`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        *self = apply_setting(self.clone(), key, value.trim())?;
        Ok(())
    }

    /// Checks the settings that the macro cannot check for code-built subscribers.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let bad = |setting: &str, reason: &str| {
            Err(crate::Error::Config(format!(
                "subscriber `{}`: `{setting}` {reason}",
                self.name
            )))
        };
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return bad("topic", "must name at least one non-empty topic");
        }
        if self.group.is_empty() {
            return bad("group", "must not be empty");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if self.max_buffered == Some(0) {
            return bad("max_buffered", "must be at least 1");
        }
        if self.max_uncommitted == 0 {
            return bad("max_uncommitted", "must be at least 1");
        }
        if self.handler_timeout.is_some_and(|d| d.is_zero()) {
            return bad("handler_timeout", "must be longer than zero (or unset)");
        }
        if self.commit_batch_size == 0 {
            return bad("commit_batch_size", "must be at least 1");
        }
        if self.commit_interval.is_zero() {
            return bad("commit_interval", "must be longer than zero");
        }
        if self.revoke_timeout.is_zero() {
            return bad(
                "revoke_timeout",
                "must be longer than zero: a revoke needs time to commit the revoked partitions' finished prefix",
            );
        }
        if self.policy.retries > 0 && self.policy.backoff.is_zero() {
            return bad("backoff", "must be longer than zero when there are retries");
        }
        if self.policy.max_backoff < self.policy.backoff {
            return bad("max_backoff", "must be at least `backoff`");
        }
        if matches!(&self.policy.on_error, OnError::DeadLetter(t) if t.trim().is_empty()) {
            return bad("dead_letter", "must name a topic");
        }
        Ok(())
    }
}

/// [`Subscriber::set`], generated from the settings table
/// (`kconc_options::settings!`): each setting `--set` takes is parsed from
/// text by its kind and handed to the builder's setter of the same name.
macro_rules! apply_settings {
    ($({ key: $key:literal, setter: $setter:ident, kind: $kind:ident $(($($choice:tt)*))?,
         attribute: $attribute:ident, set: $set:ident, $($rest:tt)* })*) => {
        fn apply_setting(sub: Subscriber, key: &str, v: &str) -> Result<Subscriber, SettingError> {
            $(apply_settings!(@one $set $kind, sub, key, v, $key, $setter);)*
            let keys: Vec<&str> = kconc_options::settable().map(|s| s.key).collect();
            Err(SettingError::new(key, format!("unknown setting `{key}` (one of {})", keys.join(", "))))
        }
    };
    (@one no $kind:ident, $($x:tt)*) => {};
    (@one yes $kind:ident, $sub:ident, $k:ident, $v:ident, $key:literal, $setter:ident) => {
        if $k == $key {
            return Ok($sub.$setter(apply_settings!(@parse $kind, $key, $v)));
        }
    };
    (@parse AtLeastOne, $key:literal, $v:ident) => { whole_number::<usize>($key, $v)? };
    (@parse WholeNumber, $key:literal, $v:ident) => { whole_number::<u32>($key, $v)? };
    (@parse Duration, $key:literal, $v:ident) => { duration($key, $v)? };
    (@parse LongerThanZero, $key:literal, $v:ident) => { duration($key, $v)? };
    (@parse Timeout, $key:literal, $v:ident) => {
        match $v {
            "none" | "off" => None,
            _ => Some(parse_duration($v).ok_or_else(|| {
                SettingError::new($key, format!("`{}` takes a duration such as `30s`, or `none`, not `{}`", $key, $v))
            })?),
        }
    };
    (@parse Text, $key:literal, $v:ident) => { $v.to_owned() };
    // A choice, or a setting the attribute reads by itself: the setter's type's `FromStr`.
    (@parse $kind:ident, $key:literal, $v:ident) => { $v.parse()? };
}

kconc_options::settings!(apply_settings);

fn whole_number<N: std::str::FromStr>(key: &str, v: &str) -> Result<N, SettingError> {
    v.parse()
        .map_err(|_| SettingError::new(key, format!("`{key}` takes a whole number, not `{v}`")))
}

fn duration(key: &str, v: &str) -> Result<Duration, SettingError> {
    parse_duration(v).ok_or_else(|| {
        SettingError::new(
            key,
            format!("`{key}` takes a duration such as `500ms`, `2s` or `1m`, not `{v}`"),
        )
    })
}

/// `"500ms"`, `"2s"`, `"1m"` as a duration; `None` for anything else.
fn parse_duration(s: &str) -> Option<Duration> {
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--set` handles every setting declared settable, with its example,
    /// and the README's `--set` row names each.
    #[test]
    fn set_takes_every_declared_setting_and_the_readme_names_it() {
        let readme = include_str!("../../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `--set NAME.KEY=VALUE`"))
            .unwrap_or_default();
        for s in kconc_options::settable() {
            let mut sub = Subscriber::new("s", ["t"], "g", |_m: Message| async {});
            if let Err(e) = sub.set(s.key, s.example) {
                panic!("--set {}={}: {e}", s.key, s.example);
            }
            assert!(
                row.contains(&format!("`{}`", s.key)),
                "the README's --set row lacks `{}`",
                s.key
            );
        }
        let mut sub = Subscriber::new("s", ["t"], "g", |_m: Message| async {});
        assert!(sub.set("topic", "x").is_err(), "the topics are the code's");
    }
}

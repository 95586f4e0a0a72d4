//! Subscribers: a handler plus the static settings it runs with, whether it
//! came from `#[subscriber]` (through the registry) or was built in code.

use std::time::Duration;

use crate::error::SettingError;
use crate::handler::{Handler, IntoHandlerResult};
use crate::message::Message;
use crate::policy::{ErrorPolicy, OnError};
use crate::state::{StateRequirement, States};

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

mod modes;
mod settings;

pub use modes::{CommitMetadata, FirstPoll, OrderingMode};

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
    pub(crate) commit_metadata: CommitMetadata,
    /// The member's static identity (`group.instance.id`, suffixed with
    /// the subscriber's name), if it has one.
    pub(crate) instance_id: Option<String>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) policy: ErrorPolicy,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) handler: Handler,
    /// Where it was declared, for errors: the `#[subscriber]` function and
    /// its file and line; `None` when built in code.
    pub(crate) origin: Option<String>,
    /// The state types its handler takes (`State<T>` arguments), checked
    /// against the app's at start-up.
    pub(crate) required_states: Vec<StateRequirement>,
    /// The app's state, given by `App::start` (what `State<T>` reads).
    pub(crate) states: States,
    /// Where what the handler returns is published (`reply = ".."`).
    pub(crate) reply: Option<String>,
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
            .field("commit_metadata", &self.commit_metadata)
            .field("instance_id", &self.instance_id)
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
            commit_metadata: CommitMetadata::Finished,
            instance_id: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            revoke_timeout: DEFAULT_REVOKE_TIMEOUT,
            policy: ErrorPolicy::default(),
            properties: Vec::new(),
            handler,
            origin: None,
            required_states: Vec::new(),
            states: States::default(),
            reply: None,
        }
    }

    /// Records that the handler takes a `State<T>` (what `#[subscriber]`
    /// generates for each argument). Not public API.
    #[doc(hidden)]
    #[must_use]
    pub fn requires_state(mut self, required: Option<StateRequirement>) -> Self {
        if let Some(r) = required {
            if !self.required_states.contains(&r) {
                self.required_states.push(r);
            }
        }
        self
    }

    /// Records that the handler takes a `State<T>`, for a subscriber built
    /// in code: `App::start` then fails, naming the subscriber and `T`, if
    /// the app provides no `T`.
    #[must_use]
    pub fn takes_state<T: 'static>(self) -> Self {
        self.requires_state(Some(StateRequirement::of::<T>()))
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

    /// What a commit writes into the offset's metadata (default
    /// [`CommitMetadata::Finished`]: the finished offsets above it, which
    /// the partition's next owner skips). See [`CommitMetadata`].
    #[must_use]
    pub fn commit_metadata(mut self, commit_metadata: CommitMetadata) -> Self {
        self.commit_metadata = commit_metadata;
        self
    }

    /// Makes the consumer a static member of its group: librdkafka's
    /// `group.instance.id` is set to `"{id}-{name}"` (the subscriber's name,
    /// so several subscribers of one process stay distinct). A member that
    /// restarts within `session.timeout.ms` gets its partitions back without
    /// a rebalance of the others; the trade-off is that a member that is
    /// really gone holds its partitions, unread, until the session times
    /// out. Use a name that stays with the instance across restarts (a pod
    /// name in a StatefulSet, a host name) and is unique in the group:
    /// two live members with one id fence each other. `--instance-id` and
    /// `KCONC_INSTANCE_ID` set it for every subscriber of a program.
    #[must_use]
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
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

    /// Publishes what the handler returns to `topic` (`reply = ".."` in
    /// the attribute, which also makes the handler's return value the
    /// replies; a handler built in code sends with
    /// [`Context::send_json`](crate::Context::send_json)).
    #[must_use]
    pub fn reply(mut self, topic: impl Into<String>) -> Self {
        self.reply = Some(topic.into());
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

    /// The topics it produces to: its reply topic and its dead-letter topic.
    pub(crate) fn produces_to(&self) -> Vec<String> {
        self.reply
            .iter()
            .chain(self.policy.dead_letter_topic())
            .cloned()
            .collect()
    }

    /// What it uses `topic` for, as an error names it (`subscribed by
    /// billing`, `reply topic of billing`), if it uses it.
    pub(crate) fn uses_of(&self, topic: &str) -> Vec<String> {
        let mut uses = Vec::new();
        if self.topics.iter().any(|t| t == topic) {
            uses.push(format!("subscribed by {}", self.name));
        }
        if self.reply.as_deref() == Some(topic) {
            uses.push(format!("reply topic of {}", self.name));
        }
        if self.policy.dead_letter_topic().is_some_and(|t| t == topic) {
            uses.push(format!("dead-letter topic of {}", self.name));
        }
        uses
    }

    pub(crate) fn effective_max_buffered(&self) -> usize {
        self.max_buffered.unwrap_or_else(|| (self.concurrency * 2).max(16))
    }

    /// Overrides one setting from text (what `--set` does); the error says
    /// what the setting accepts. Values are checked again by `App::start`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        if (key, value.trim()) == ("on_error", "dead_letter") {
            // What it is already, when it has a dead-letter topic.
            return match self.policy.dead_letter_topic() {
                Some(_) => Ok(()),
                None => Err(SettingError::new(
                    key,
                    format!(
                        "`on_error=dead_letter` needs a dead-letter topic: set `{}.dead_letter=TOPIC` instead",
                        self.name
                    ),
                )),
            };
        }
        *self = settings::apply_setting(self.clone(), key, value.trim())?;
        Ok(())
    }
}

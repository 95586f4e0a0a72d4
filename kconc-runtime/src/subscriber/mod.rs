//! Subscribers: a handler plus the static settings it runs with, whether it
//! came from `#[subscriber]` (through the registry) or was built in code.

use crate::error::SettingError;
use crate::handler::{Handler, IntoHandlerResult};
use crate::message::Message;
use crate::state::{StateRequirement, States};

mod modes;
mod settings;

pub use modes::{CommitMetadata, FirstPoll, GroupProtocol, OffsetStore, OrderingMode};
pub(crate) use settings::Settings;

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
    /// Every setting of the table that is a value of its own (the
    /// builder's setters and `--set` write them).
    pub(crate) settings: Settings,
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
    /// The database its handler's `Tx` argument names (`store = "sql"`).
    pub(crate) sql: Option<crate::sql::StoreSpec>,
    /// The payload and key types its handler reads, for the AsyncAPI
    /// document.
    pub(crate) described: crate::describe::Described,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Subscriber");
        d.field("name", &self.name)
            .field("topics", &self.topics)
            .field("group", &self.group);
        self.settings.debug_fields(&mut d);
        d.field(
            "max_buffered (in effect)",
            &self.settings.max_buffered(self.handler.is_batch()),
        )
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
            settings: Settings::default(),
            properties: Vec::new(),
            handler,
            origin: None,
            required_states: Vec::new(),
            described: crate::describe::Described::default(),
            states: States::default(),
            sql: None,
        }
    }

    /// Exactly once into the database `DB` (`store = "sql"` for a handler
    /// built in code): each call runs in a transaction of the app's
    /// `sqlx::Pool<DB>` (a state), which the handler takes with
    /// [`Tx::current`](crate::sql::Tx::current) and writes through; see
    /// [`sql`](crate::sql).
    #[must_use]
    pub fn exactly_once<DB: crate::sql::Database>(self) -> Self {
        use crate::sql::TxArg as _;
        self.store(OffsetStore::Sql).sql_store(crate::sql::Tx::<DB>::spec())
    }

    /// Records the database of the handler's `Tx` argument (what
    /// `#[subscriber]` generates with `store = "sql"`). Not public API.
    #[doc(hidden)]
    #[must_use]
    pub fn sql_store(mut self, spec: crate::sql::StoreSpec) -> Self {
        self.sql = Some(spec);
        self.requires_state(Some(spec.requires))
    }

    /// Records what one argument of a `#[subscriber]` handler says of the
    /// message (generated code; not public API).
    #[doc(hidden)]
    #[must_use]
    pub fn describes(mut self, what: Option<crate::describe::Describes>) -> Self {
        if let Some(what) = what {
            self.described.add(what);
        }
        self
    }

    /// The type the handler decodes the payload to, for the AsyncAPI
    /// document's schema of its messages (`#[subscriber]` finds it in the
    /// handler's `Json<T>` argument; a subscriber built in code says it
    /// here).
    #[must_use]
    pub fn payload_schema<T: schemars::JsonSchema>(mut self) -> Self {
        self.described.payload::<T>();
        self
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
        self.settings.ordering
    }

    /// Where its handlers run.
    pub fn first_poll_mode(&self) -> FirstPoll {
        self.settings.first_poll
    }

    /// The topics it produces to: its reply topic and its dead-letter topic.
    pub(crate) fn produces_to(&self) -> Vec<String> {
        let s = &self.settings;
        s.reply.iter().chain(s.on_error.dead_letter_topic()).cloned().collect()
    }

    /// What it uses `topic` for, as an error names it (`subscribed by
    /// billing`, `reply topic of billing`), if it uses it.
    pub(crate) fn uses_of(&self, topic: &str) -> Vec<String> {
        let mut uses = Vec::new();
        if self.topics.iter().any(|t| t == topic) {
            uses.push(format!("subscribed by {}", self.name));
        }
        if self.settings.reply.as_deref() == Some(topic) {
            uses.push(format!("reply topic of {}", self.name));
        }
        if self.settings.on_error.dead_letter_topic().is_some_and(|t| t == topic) {
            uses.push(format!("dead-letter topic of {}", self.name));
        }
        uses
    }

    /// Overrides one setting from text (what `--set` does); the error says
    /// what the setting accepts. Values are checked again by `App::start`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        if (key, value.trim()) == ("on_error", "dead_letter") {
            // What it is already, when it has a dead-letter topic.
            return match self.settings.on_error.dead_letter_topic() {
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

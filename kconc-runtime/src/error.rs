//! Errors of starting and running an application.

use rdkafka::error::KafkaError;

/// Why an [`App`](crate::App) could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line, the environment, a properties file or a librdkafka
    /// property is invalid; the message names where it came from and what is
    /// accepted.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A subscriber's setting is invalid (checked by `App::start`).
    #[error("invalid configuration: subscriber `{subscriber}`: {source}")]
    Setting {
        /// The subscriber's name.
        subscriber: String,
        /// Which setting, and what it takes.
        #[source]
        source: SettingError,
    },
    /// A handler takes a `State<T>` the app does not provide.
    #[error(
        "invalid configuration: subscriber `{subscriber}` takes `State<{type_name}>`, but the app provides no \
         `{type_name}`: give it with main!(state = ..), App::state(..) or TestApp::state(..)"
    )]
    MissingState {
        /// The subscriber's name.
        subscriber: String,
        /// The state's type.
        type_name: &'static str,
    },
    /// Topics the subscribers consume, reply to or dead-letter to do not
    /// exist (and `App::wait_for_topics` is off).
    #[error(
        "invalid configuration: {} on the cluster at {brokers}: create {}, or start with --wait-for-topics \
         (KCONC_WAIT_FOR_TOPICS=true, App::wait_for_topics) to wait for {}",
        describe_missing(missing),
        if missing.len() == 1 { "it" } else { "them" },
        if missing.len() == 1 { "it" } else { "them" }
    )]
    MissingTopics {
        /// Each topic that does not exist, and what uses it (`subscribed
        /// by billing`, `reply topic of billing`, `dead-letter topic of
        /// billing`).
        missing: Vec<(String, Vec<String>)>,
        /// The cluster asked.
        brokers: String,
    },
    /// The HTTP endpoint's address (`--http`) cannot be bound.
    #[error("invalid configuration: --http/KCONC_HTTP `{addr}`: {source}")]
    Http {
        /// The address given.
        addr: String,
        /// Why it cannot be bound.
        #[source]
        source: std::io::Error,
    },
    /// The Kafka client refused an operation for a subscriber.
    #[error("subscriber `{subscriber}`: {source}")]
    Kafka {
        /// The subscriber's name.
        subscriber: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// The embedded (in-process mock) cluster could not start or be set up.
    #[error("embedded cluster: {0}")]
    Embedded(String),
    /// `App::start` was called outside a tokio runtime.
    #[error("kconc must be started from within a tokio runtime")]
    NoRuntime,
    /// A thread could not be spawned.
    #[error("subscriber `{0}`: cannot spawn a thread: {1}")]
    Thread(String, #[source] std::io::Error),
    /// Installing the signal handlers failed.
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(#[source] std::io::Error),
    /// A start-up hook (`App::state_from`, `App::on_start`, `main!(state =
    /// ..)`) failed or took longer than the longest `shutdown_timeout`.
    #[error("start-up hook failed: {0}")]
    StartHook(#[source] crate::handler::BoxError),
    /// A shutdown hook (`App::on_stop`, `main!(on_stop = ..)`) failed or
    /// took longer than the longest `shutdown_timeout`.
    #[error("shutdown hook failed: {0}")]
    StopHook(#[source] crate::handler::BoxError),
    /// A subscriber stopped on its own while the app ran: its consumer
    /// raised a fatal error (a static member fenced by another with the
    /// same instance id, say), or a thread of it ended. The app shuts down
    /// (a restart, by an orchestrator, is the cure).
    #[error("subscriber `{subscriber}` stopped: {reason}")]
    SubscriberFailed {
        /// The subscriber's name.
        subscriber: String,
        /// Why.
        reason: String,
    },
    /// The metrics could not be encoded.
    #[error("cannot encode metrics: {0}")]
    Metrics(#[source] std::fmt::Error),
    /// A [`testing`](crate::testing) wait ran out of time (it says what it
    /// awaited and what it saw), or the harness could not read the cluster.
    #[error("test harness: {0}")]
    Harness(String),
    /// A [`testing`](crate::testing) helper could not produce or read back.
    #[error("{0}")]
    Produce(String),
}

/// "topic `a` (subscribed by x) does not exist" or "these topics do not
/// exist: `a` (...), `b` (...)".
fn describe_missing(missing: &[(String, Vec<String>)]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|(topic, uses)| format!("`{topic}` ({})", uses.join("; ")))
        .collect();
    match &each[..] {
        [one] => format!("topic {one} does not exist"),
        _ => format!("these topics do not exist: {}", each.join(", ")),
    }
}

/// A subscriber setting given a value it does not take, from
/// [`Subscriber::set`](crate::Subscriber::set) (`--set`) or the `FromStr`
/// of a setting's type; it names the setting and says what it takes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct SettingError {
    setting: String,
    problem: String,
}

impl SettingError {
    pub(crate) fn new(setting: &str, problem: String) -> Self {
        SettingError {
            setting: setting.to_owned(),
            problem,
        }
    }

    /// The setting, as `#[subscriber]` and `--set` name it (`ordering`,
    /// `commit_interval`); for an unknown setting, the name given.
    pub fn setting(&self) -> &str {
        &self.setting
    }
}

impl Error {
    /// Client creation fails on a bad property; librdkafka's message names
    /// the property (and, for an invalid value, quotes the value, which may be
    /// a secret, so the message is reduced to the property's name then).
    pub(crate) fn from_client_creation(subscriber: &str, e: KafkaError) -> Self {
        let text = e.to_string();
        let msg = match quoted_property(&text) {
            Some(prop) if crate::secret::is_secret(&prop) => {
                format!("subscriber `{subscriber}`: invalid value for librdkafka property `{prop}` (value not shown)")
            }
            _ => format!("subscriber `{subscriber}`: {text}"),
        };
        Error::Config(msg)
    }
}

/// The property named in a librdkafka configuration error such as
/// `Invalid value "x" for configuration property "sasl.password"`.
fn quoted_property(text: &str) -> Option<String> {
    let rest = &text[text.find("property \"")? + "property \"".len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_secret_value_is_not_quoted() {
        let e =
            KafkaError::ClientCreation("Invalid value \"hunter2\" for configuration property \"sasl.password\"".into());
        let text = Error::from_client_creation("billing", e).to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("`sasl.password`") && text.contains("billing"), "{text}");
    }

    #[test]
    fn a_rejected_ordinary_value_is_shown_with_its_property() {
        let e = KafkaError::ClientCreation(
            "Invalid value \"soon\" for configuration property \"session.timeout.ms\"".into(),
        );
        let text = Error::from_client_creation("billing", e).to_string();
        assert!(text.contains("session.timeout.ms") && text.contains("soon"), "{text}");
    }
}

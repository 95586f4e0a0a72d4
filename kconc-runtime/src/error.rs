//! Errors of starting and running an application.

use rdkafka::error::KafkaError;

/// Why an [`App`](crate::App) could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; the message names it and says what is accepted.
    #[error("invalid configuration: {0}")]
    Config(String),
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
    /// A [`testing`](crate::testing) helper could not produce or read back.
    #[error("{0}")]
    Produce(String),
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

//! The handler's context: which subscriber it runs for, a signal that
//! shutdown has begun, and a producer for follow-up messages.

use std::sync::{Arc, OnceLock};

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

/// What a handler may need beyond the message. Take it as an argument
/// (`cx: Context`); cloning it is cheap.
#[derive(Clone)]
pub struct Context(Arc<Shared>);

struct Shared {
    subscriber: Arc<str>,
    group: Arc<str>,
    shutdown: CancellationToken,
    producer_config: ClientConfig,
    producer: OnceLock<Result<FutureProducer, String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("subscriber", &self.0.subscriber)
            .field("group", &self.0.group)
            .field("shutting_down", &self.0.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Consumer-only librdkafka properties, left out of the follow-up producer's
/// configuration (librdkafka would warn about each).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "consume.callback.max.messages",
];

impl Context {
    /// Builds the context of one subscriber. The producer is made from the
    /// consumer's configuration (same cluster, same security settings) on
    /// first use.
    pub(crate) fn new(subscriber: Arc<str>, group: &str, shutdown: CancellationToken, consumer: &ClientConfig) -> Self {
        let mut producer_config = ClientConfig::new();
        for (k, v) in consumer.config_map() {
            let consumer_only = CONSUMER_ONLY.contains(&k) || k.starts_with("fetch.") || k.starts_with("queued.");
            if !consumer_only {
                producer_config.set(k, v);
            }
        }
        producer_config.set("client.id", format!("kconc-{subscriber}-producer"));
        producer_config.set("enable.idempotence", "true");
        Self(Arc::new(Shared {
            subscriber,
            group: Arc::from(group),
            shutdown,
            producer_config,
            producer: OnceLock::new(),
        }))
    }

    /// A context for calling a handler by hand (tests of handlers).
    pub fn for_test(subscriber: &str, group: &str) -> Self {
        Self::new(
            Arc::from(subscriber),
            group,
            CancellationToken::new(),
            &ClientConfig::new(),
        )
    }

    /// The subscriber's name.
    pub fn subscriber(&self) -> &str {
        &self.0.subscriber
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.0.group
    }

    pub(crate) fn group_name(&self) -> Arc<str> {
        self.0.group.clone()
    }

    /// Whether graceful shutdown has begun. A long handler may check it and
    /// return early with an error, so its message is redelivered after a
    /// restart instead of being cut off at the shutdown timeout.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }

    /// Completes when graceful shutdown begins (for `tokio::select!`).
    pub async fn shutting_down(&self) {
        self.0.shutdown.cancelled().await;
    }

    /// A producer on the same cluster, for follow-up messages; created on
    /// first use and shared by every handler of the subscriber.
    ///
    /// Fails (every time, with the same message) if the producer cannot be
    /// created, e.g. on an invalid producer property.
    pub fn producer(&self) -> Result<&FutureProducer, crate::Error> {
        self.0
            .producer
            .get_or_init(|| self.0.producer_config.create().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| {
                crate::Error::Config(format!(
                    "subscriber `{}`: cannot create the producer: {e}",
                    self.0.subscriber
                ))
            })
    }
}

//! The handler's context: which subscriber it runs for, a signal that
//! shutdown has begun, and a producer for follow-up messages.

use std::sync::{Arc, OnceLock};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::state::States;

/// What a handler may need beyond the message. Take it as an argument
/// (`cx: Context`); cloning it is cheap.
#[derive(Clone)]
pub struct Context(Arc<Shared>);

struct Shared {
    subscriber: Arc<str>,
    group: Arc<str>,
    shutdown: CancellationToken,
    producer_config: ClientConfig,
    producer: OnceLock<Result<FutureProducer<ProducerHooks>, String>>,
    /// Where the producer's librdkafka lines go (the app's view of its
    /// cluster), if anywhere but the log.
    watch: Option<Arc<crate::watch::ClusterWatch>>,
    states: States,
    reply: Option<Arc<str>>,
}

/// The rdkafka context of the producer a [`Context`] gives: its librdkafka
/// log lines and errors go where the consumers' do (one line per repeated
/// text, and no connection failure once the app shuts down: a producer a
/// handler still holds then outlives the embedded cluster).
pub struct ProducerHooks {
    subscriber: Arc<str>,
    watch: Option<Arc<crate::watch::ClusterWatch>>,
}

impl std::fmt::Debug for ProducerHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerHooks")
            .field("subscriber", &self.subscriber)
            .finish_non_exhaustive()
    }
}

impl ClientContext for ProducerHooks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match &self.watch {
            Some(watch) => watch.log(level, &self.subscriber, fac, log_message),
            None => tracing::debug!(
                subscriber = &*self.subscriber,
                facility = fac,
                "librdkafka: {log_message}"
            ),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match &self.watch {
            Some(watch) => watch.client_error(&self.subscriber, &error, reason),
            None => tracing::warn!(subscriber = &*self.subscriber, error = %error, "librdkafka: {reason}"),
        }
    }
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
    "max.partition.fetch.bytes",
    "auto.commit.enable",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "coordinator.query.interval.ms",
    "group.protocol.type",
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

/// The largest record (key, payload, headers) the consumer can receive:
/// a fetch response, which holds at least one whole record batch, must fit
/// in `receive.message.max.bytes` (librdkafka's default 100,000,000).
fn largest_receivable(consumer: &ClientConfig) -> u64 {
    consumer
        .get("receive.message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(100_000_000)
}

/// Room for the `kconc-*` headers a dead letter adds to its record.
const DEAD_LETTER_HEADROOM: u64 = 64 * 1024;

/// The follow-up producer's configuration: the consumer's (same cluster,
/// same security settings; its consumer-only properties left out), with
/// an idempotent producer sized so that any record the consumer received,
/// plus a dead letter's headers, fits in one produce (librdkafka's
/// default `message.max.bytes`, 1,000,000, is smaller than what a broker
/// may accept and a consumer receive).
pub(crate) fn producer_config(subscriber: &str, consumer: &ClientConfig) -> ClientConfig {
    let mut producer = ClientConfig::new();
    // `config_map` hides secret values; `get` gives them as set.
    for k in consumer.config_map().keys() {
        let consumer_only = CONSUMER_ONLY.contains(k) || k.starts_with("fetch.") || k.starts_with("queued.");
        if let (false, Some(v)) = (consumer_only, consumer.get(k)) {
            producer.set(*k, v);
        }
    }
    producer.set("client.id", format!("kconc-{subscriber}-producer"));
    producer.set("enable.idempotence", "true");
    let set = producer
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let wanted = (largest_receivable(consumer) + DEAD_LETTER_HEADROOM).min(1_000_000_000);
    producer.set("message.max.bytes", set.max(wanted).to_string());
    producer
}

impl Context {
    /// Builds the context of one subscriber. The producer is made from the
    /// consumer's configuration (same cluster, same security settings) on
    /// first use.
    pub(crate) fn new(
        subscriber: Arc<str>,
        group: &str,
        shutdown: CancellationToken,
        consumer: &ClientConfig,
        states: States,
        reply: Option<&str>,
    ) -> Self {
        let producer_config = producer_config(&subscriber, consumer);
        Self(Arc::new(Shared {
            subscriber,
            group: Arc::from(group),
            shutdown,
            producer_config,
            producer: OnceLock::new(),
            states,
            reply: reply.map(Arc::from),
            watch: None,
        }))
    }

    /// The same context, its producer's librdkafka lines going to `watch`
    /// (as the consumers' do). Only before the context is shared.
    pub(crate) fn watched_by(mut self, watch: Arc<crate::watch::ClusterWatch>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.watch = Some(watch);
        }
        self
    }

    /// A context for calling a handler by hand (tests of handlers).
    pub fn for_test(subscriber: &str, group: &str) -> Self {
        Self::new(
            Arc::from(subscriber),
            group,
            CancellationToken::new(),
            &ClientConfig::new(),
            States::default(),
            None,
        )
    }

    /// The topic the subscriber's replies go to (`reply = ".."`).
    pub fn reply_topic(&self) -> Option<&str> {
        self.0.reply.as_deref()
    }

    /// The app's state of type `T`, cloned (what a [`State<T>`](crate::State)
    /// argument receives); `None` if the app provides none.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0.states.get::<T>()
    }

    /// The subscriber's name.
    pub fn subscriber(&self) -> &str {
        &self.0.subscriber
    }

    /// The follow-up producer's configuration (for tests of its building).
    #[cfg(test)]
    pub(crate) fn producer_config(&self) -> &ClientConfig {
        &self.0.producer_config
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
    pub fn producer(&self) -> Result<&FutureProducer<ProducerHooks>, crate::error::Error> {
        self.0
            .producer
            .get_or_init(|| {
                let hooks = ProducerHooks {
                    subscriber: self.0.subscriber.clone(),
                    watch: self.0.watch.clone(),
                };
                self.0
                    .producer_config
                    .create_with_context(hooks)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                crate::error::Error::Config(format!(
                    "subscriber `{}`: cannot create the producer: {e}",
                    self.0.subscriber
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_gets_the_consumers_secrets_as_set_and_room_for_any_received_record() {
        let mut consumer = ClientConfig::new();
        consumer
            .set("bootstrap.servers", "b:9092")
            .set("group.id", "g")
            .set("sasl.password", "hunter2")
            .set("fetch.max.bytes", "1000")
            .set("session.timeout.ms", "6000");
        let of = |consumer: &ClientConfig| {
            Context::new(
                Arc::from("s"),
                "g",
                CancellationToken::new(),
                consumer,
                States::default(),
                None,
            )
        };
        let cx = of(&consumer);
        let p = cx.producer_config();
        assert_eq!(p.get("sasl.password"), Some("hunter2"), "a sanitized copy of a secret");
        assert_eq!(p.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(
            (p.get("group.id"), p.get("session.timeout.ms"), p.get("fetch.max.bytes")),
            (None, None, None)
        );
        assert_eq!(p.get("message.max.bytes"), Some("100065536"));
        consumer.set("receive.message.max.bytes", "5000000");
        let cx = of(&consumer);
        assert_eq!(cx.producer_config().get("message.max.bytes"), Some("5065536"));
    }
}

//! The watcher task: asks the cluster for the subscribed topics' metadata
//! now and then, with a metadata-only client that never creates topics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::{ClusterWatch, CHECK_EVERY, CHECK_OFTEN, METADATA_TIMEOUT, REMIND_EVERY};
use crate::stats::Stats;

/// The watcher's metadata client: its librdkafka lines go through the
/// watch, as the consumers' do.
struct WatchContext(Arc<ClusterWatch>);

impl ClientContext for WatchContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, "", fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.client_error("", &error, reason);
    }
}

impl ConsumerContext for WatchContext {}

/// One subscriber as the app watches it: its topics (and where the watcher
/// says which are missing, in `stats`), and what health and metrics read.
#[derive(Clone, Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) group: String,
    pub(crate) topics: Vec<String>,
    /// The topics it replies and dead-letters to (watched too: a reply or
    /// dead letter to a missing topic is never acknowledged).
    pub(crate) produces_to: Vec<String>,
    pub(crate) stats: Arc<Stats>,
    /// The app's view of its cluster, shared by its subscribers.
    pub(crate) cluster: Arc<ClusterWatch>,
}

impl Watched {
    /// Whether it consumes, replies to or dead-letters to `topic`.
    pub(crate) fn uses(&self, topic: &str) -> bool {
        self.topics.iter().chain(&self.produces_to).any(|t| t == topic)
    }
}

/// A client that only asks for metadata, with the consumers' connection
/// settings (`config` is a subscriber's consumer configuration): no group,
/// and it never creates a topic.
fn metadata_client(config: &ClientConfig, watch: &Arc<ClusterWatch>) -> Result<BaseConsumer<WatchContext>, KafkaError> {
    let mut config = config.clone();
    config.remove("group.id");
    config.remove("group.instance.id");
    config.set("allow.auto.create.topics", "false");
    config.create_with_context(WatchContext(watch.clone()))
}

/// Which of `topics` the cluster says do not exist; `Err` when it did not
/// answer in time.
fn missing_topics(client: &BaseConsumer<WatchContext>, topics: &[String]) -> Result<Vec<String>, KafkaError> {
    let mut missing = Vec::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let exists = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !exists {
            missing.push(topic.clone());
        }
    }
    Ok(missing)
}

/// The start-up check: the subscribed topics the cluster says do not exist
/// (`None` when it did not answer in time: the watcher reports on it).
pub(crate) fn missing_at_start(
    config: &ClientConfig,
    watch: &Arc<ClusterWatch>,
    topics: &[String],
) -> Option<Vec<String>> {
    let client = metadata_client(config, watch).ok()?;
    let missing = missing_topics(&client, topics).ok()?;
    watch.reachable();
    Some(missing)
}

/// Runs the watcher until `stop`: asks for the subscribed topics' metadata
/// every [`CHECK_EVERY`] ([`CHECK_OFTEN`] while something is wrong), marks
/// the cluster reachable when it answers, and keeps each subscriber's
/// missing topics (logged when one goes missing, every [`REMIND_EVERY`]
/// while it stays so, and when it exists again).
pub(crate) fn spawn(
    config: ClientConfig,
    watch: Arc<ClusterWatch>,
    subscribers: Vec<Watched>,
    stop: CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        let client = match metadata_client(&config, &watch) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the cluster's topics: no metadata client");
                return;
            }
        };
        let mut topics: Vec<String> = subscribers
            .iter()
            .flat_map(|s| s.topics.iter().chain(&s.produces_to).cloned())
            .collect();
        topics.sort();
        topics.dedup();
        let mut reminded: HashMap<String, Instant> = HashMap::new();
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let (c, t) = (client.clone(), topics.clone());
            let asked = tokio::task::spawn_blocking(move || missing_topics(&c, &t));
            let answer = tokio::select! {
                () = stop.cancelled() => break,
                answer = asked => match answer {
                    Ok(answer) => answer,
                    Err(_) => break,
                },
            };
            let Ok(missing) = answer else {
                wait = CHECK_OFTEN;
                continue;
            };
            watch.reachable();
            let now = Instant::now();
            for topic in &topics {
                let gone = missing.contains(topic);
                let names: Vec<&str> = subscribers
                    .iter()
                    .filter(|s| s.uses(topic))
                    .map(|s| s.name.as_str())
                    .collect();
                match (gone, reminded.get(topic)) {
                    (true, None) => {
                        reminded.insert(topic.clone(), now);
                        tracing::warn!(
                            topic = &**topic,
                            subscribers = ?names,
                            "topic `{topic}` does not exist; waiting for it (said again every {} s)",
                            REMIND_EVERY.as_secs()
                        );
                    }
                    (true, Some(&at)) if now.duration_since(at) >= REMIND_EVERY => {
                        reminded.insert(topic.clone(), now);
                        tracing::warn!(topic = &**topic, subscribers = ?names, "topic `{topic}` still does not exist");
                    }
                    (false, Some(_)) => {
                        reminded.remove(topic);
                        tracing::info!(topic = &**topic, subscribers = ?names, "topic `{topic}` exists now");
                    }
                    _ => {}
                }
            }
            for s in &subscribers {
                let mine: Vec<String> = missing.iter().filter(|t| s.uses(t)).cloned().collect();
                if let Ok(mut m) = s.stats.missing_topics.lock() {
                    *m = mine;
                }
            }
            wait = if missing.is_empty() { CHECK_EVERY } else { CHECK_OFTEN };
        }
        // Shutting down: the consumers are closing, nothing is left to
        // reach the cluster for.
        watch.close();
        // The client is dropped off the runtime's threads: its destruction
        // waits for librdkafka's threads.
        drop(tokio::task::spawn_blocking(move || drop(client)));
    })
}

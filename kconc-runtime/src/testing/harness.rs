//! The test harness: a program's subscribers, in-process, on a fresh
//! embedded cluster, with messages sent in and read back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Serialize;

use crate::app::{App, Running};
use crate::config::EMBEDDED;
use crate::error::Error;
use crate::handler::BoxError;
use crate::message::Message;
use crate::stats::StatsSnapshot;

/// How often the harness looks again while it waits.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// A program's `#[subscriber]`s (all, or some by name), run in-process on a
/// fresh embedded cluster, for a `#[tokio::test]`:
///
/// ```no_run
/// # use kconc_runtime::testing::TestApp;
/// # async fn f() -> Result<(), kconc_runtime::Error> {
/// # #[derive(Clone)] struct Db;
/// let run = TestApp::new().only(["billing"]).state(Db).start().await?;
/// run.send_json("orders", "cust-1", &serde_json::json!({"id": 1, "amount": 5})).await?;
/// run.wait_handled("billing", 1).await?;
/// let billed = run.read("orders.billed", 1).await?;
/// run.stop().await;
/// # let _ = billed;
/// # Ok(())
/// # }
/// ```
///
/// Each topic is created with [`TestApp::partitions`] partitions (default
/// 1, so messages keep the order they were sent in): the subscribed
/// topics, their dead-letter and reply topics, and any [`TestApp::topic`].
/// To keep a test short, the subscribers commit every 50 ms
/// (`commit_interval`) and their fetches wait at most 10 ms for data;
/// `.app(..)` may set them otherwise.
/// Waits fail after [`TestApp::deadline`] (default 10 s) with what was
/// awaited and what was seen.
pub struct TestApp {
    app: App,
    partitions: i32,
    topics: Vec<String>,
    deadline: Duration,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("app", &self.app)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Default for TestApp {
    fn default() -> Self {
        Self::new()
    }
}

impl TestApp {
    /// Every `#[subscriber]` of the program, on a fresh embedded cluster.
    pub fn new() -> Self {
        Self::with_app(App::from_registry())
    }

    /// The subscribers of `app` (built in code, say) instead of the
    /// registered ones; its brokers are replaced by a fresh embedded cluster.
    pub fn with_app(app: App) -> Self {
        // Short waits, so a test is quick: the mock cluster waits
        // `session.timeout.ms - 1 s` for more members on a rebalance; an
        // idle fetch waits `fetch.wait.max.ms` for data; finished offsets
        // are committed every `commit_interval`, which `wait_idle` waits for.
        let mut app = app
            .brokers(EMBEDDED)
            .property("session.timeout.ms", "6000")
            .property("heartbeat.interval.ms", "500")
            .property("fetch.wait.max.ms", "10");
        // The subscribers it has so far (none is an error only `start` reports).
        let _ = app.override_setting("*.commit_interval=50ms");
        TestApp {
            app,
            partitions: 1,
            topics: Vec::new(),
            deadline: Duration::from_secs(10),
        }
    }

    /// Runs only the subscribers named.
    #[must_use]
    pub fn only<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.app = self.app.only(names);
        self
    }

    /// Provides a state value (see [`App::state`]).
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.app = self.app.state(value);
        self
    }

    /// Changes a subscriber's setting for this test, as `--set
    /// NAME.KEY=VALUE` does: `.set("billing.retries", 0)`,
    /// `.set("*.ordering", "unordered")` (see [`App::set`]).
    #[must_use]
    pub fn set(mut self, setting: &str, value: impl std::fmt::Display) -> Self {
        self.app = self.app.set(setting, value);
        self
    }

    /// Anything else of the [`App`]: a start-up or shutdown hook, a
    /// property, a subscriber built in code.
    #[must_use]
    pub fn app(mut self, f: impl FnOnce(App) -> App) -> Self {
        self.app = f(self.app);
        self
    }

    /// Partitions of each topic (default 1).
    #[must_use]
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = n;
        self
    }

    /// Creates `topic` too (one the handlers send to by hand, say).
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// How long each wait may take before it fails (default 10 s).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Starts the cluster, runs the start-up hooks, starts the subscribers.
    pub async fn start(self) -> Result<TestRun, Error> {
        let mut app = self.app.embedded_partitions(self.partitions);
        for t in self.topics {
            app = app.embedded_topic(t);
        }
        let running = app.launch().await?;
        let bootstrap = running.bootstrap_servers().to_owned();
        // Idempotent, so that a retried produce keeps the order of sends.
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "0")
            .set("enable.idempotence", "true")
            .create()
            .map_err(harness)?;
        let reader = reader_config(&bootstrap, "kconc-test-reader")
            .create()
            .map_err(harness)?;
        Ok(TestRun {
            running,
            bootstrap,
            producer,
            deadline: self.deadline,
            reader,
            groups: Mutex::default(),
        })
    }
}

/// Subscribers running under [`TestApp`]: send to them, wait for them,
/// read what they published.
pub struct TestRun {
    running: Running,
    bootstrap: String,
    producer: FutureProducer,
    deadline: Duration,
    /// Reads topics and their metadata; kept for the whole run (a new
    /// consumer takes a while to learn the cluster).
    reader: BaseConsumer,
    /// Reads each group's committed offsets.
    groups: Mutex<HashMap<String, BaseConsumer>>,
}

impl std::fmt::Debug for TestRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRun")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

/// A message to send: a payload, and optionally a key and headers.
#[derive(Clone, Debug, Default)]
pub struct TestMessage {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    partition: Option<i32>,
}

impl TestMessage {
    /// A message with this payload.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        TestMessage {
            payload: payload.into(),
            ..TestMessage::default()
        }
    }

    /// A message whose payload is `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Self {
        TestMessage::new(serde_json::to_vec(value).unwrap_or_default())
    }

    /// Its key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// A header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Its partition (by default the partitioner picks, by key).
    #[must_use]
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

impl TestRun {
    /// The embedded cluster (for fault injection through its mock).
    pub fn embedded(&self) -> Option<&crate::EmbeddedCluster> {
        self.running.embedded()
    }

    /// The embedded cluster's bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Sends `message` to `topic` and waits for the broker's acknowledgement:
    /// one round trip to the embedded cluster (well under a millisecond).
    /// For many messages, [`send_many`](Self::send_many) waits once for all.
    pub async fn send(&self, topic: &str, message: TestMessage) -> Result<(), Error> {
        self.send_many(topic, [message]).await
    }

    /// Sends `value` as JSON to `topic` with `key`, and waits for the
    /// broker's acknowledgement.
    pub async fn send_json<T: Serialize>(&self, topic: &str, key: &str, value: &T) -> Result<(), Error> {
        self.send(topic, TestMessage::json(value).key(key)).await
    }

    /// Sends every message to `topic`, in order (messages of one partition
    /// keep it), and waits until the broker has acknowledged them all: a
    /// thousand messages take a few milliseconds. Fails if any is not
    /// delivered within the [deadline](TestApp::deadline).
    pub async fn send_many(&self, topic: &str, messages: impl IntoIterator<Item = TestMessage>) -> Result<(), Error> {
        let started = Instant::now();
        let mut pending: std::collections::VecDeque<DeliveryFuture> = std::collections::VecDeque::new();
        for m in messages {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(&m.payload[..]);
            if let Some(key) = &m.key {
                record = record.key(&key[..]);
            }
            if let Some(p) = m.partition {
                record = record.partition(p);
            }
            if !m.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
                for (k, v) in &m.headers {
                    headers = headers.insert(Header { key: k, value: Some(v) });
                }
                record = record.headers(headers);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    // librdkafka's queue is full: wait for the oldest send.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        match pending.pop_front() {
                            Some(oldest) => self.delivered(topic, oldest, started).await?,
                            None => tokio::time::sleep(LOOK_EVERY).await,
                        }
                    }
                    Err((e, _)) => return Err(Error::Produce(format!("cannot send to `{topic}`: {e}"))),
                }
                if started.elapsed() > self.deadline {
                    return Err(Error::Harness(format!(
                        "`{topic}`: librdkafka's queue still full after {:?}",
                        self.deadline
                    )));
                }
            }
        }
        for delivery in pending {
            self.delivered(topic, delivery, started).await?;
        }
        Ok(())
    }

    /// Sends each `(key, value)` to `topic` with the value as JSON, in
    /// order, and waits for them all (see [`send_many`](Self::send_many)).
    pub async fn send_json_many<K, T, I>(&self, topic: &str, messages: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = (K, T)>,
        K: Into<Vec<u8>>,
        T: Serialize,
    {
        self.send_many(topic, messages.into_iter().map(|(k, v)| TestMessage::json(&v).key(k)))
            .await
    }

    /// Waits (within what is left of the deadline since `started`) for one
    /// send's acknowledgement.
    async fn delivered(&self, topic: &str, delivery: DeliveryFuture, started: Instant) -> Result<(), Error> {
        let left = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(Error::Produce(format!("cannot send to `{topic}`: {e}"))),
            Ok(Err(_)) => Err(Error::Harness("the test producer was dropped".into())),
            Err(_) => Err(Error::Harness(format!(
                "`{topic}`: a send not acknowledged after {:?}",
                self.deadline
            ))),
        }
    }

    /// The counters of the subscriber named `name`.
    pub fn stats(&self, name: &str) -> Result<StatsSnapshot, Error> {
        self.running
            .stats(name)
            .ok_or_else(|| Error::Harness(format!("no subscriber named `{name}` runs here")))
    }

    /// Waits until `n` messages of the subscriber named `name` have reached
    /// their outcome: handled, or failed for good (skipped, dead-lettered or
    /// stopped) once their retries are spent.
    pub async fn wait_handled(&self, name: &str, n: u64) -> Result<StatsSnapshot, Error> {
        let started = Instant::now();
        loop {
            let s = self.stats(name)?;
            let finished = s.handled + s.skipped + s.dead_lettered + s.stopped;
            if finished >= n {
                return Ok(s);
            }
            if started.elapsed() > self.deadline {
                return Err(Error::Harness(format!(
                    "`{name}`: {finished} of {n} messages finished after {:?} ({} received, {} handled, {} failed, \
                     {} retried, {} skipped, {} dead-lettered, {} stopped)",
                    self.deadline, s.received, s.handled, s.failed, s.retried, s.skipped, s.dead_lettered, s.stopped
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Waits until the batch handler named `name` has been called `n`
    /// times (each call's messages count in [`TestRun::wait_handled`] too);
    /// the snapshot's `batches` and `handled` say how many calls and
    /// messages.
    pub async fn wait_batches(&self, name: &str, n: u64) -> Result<StatsSnapshot, Error> {
        let started = Instant::now();
        loop {
            let s = self.stats(name)?;
            if s.batches >= n {
                return Ok(s);
            }
            if started.elapsed() > self.deadline {
                return Err(Error::Harness(format!(
                    "`{name}`: {} of {n} batches after {:?} ({} messages received, {} handled)",
                    s.batches, self.deadline, s.received, s.handled
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Waits until the subscriber named `name` has committed everything on
    /// its topics (every partition's committed offset at its end).
    pub async fn wait_idle(&self, name: &str) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let behind = self.behind(name)?;
            if behind.is_empty() {
                return Ok(());
            }
            if started.elapsed() > self.deadline {
                return Err(Error::Harness(format!(
                    "`{name}` not idle after {:?}: {}",
                    self.deadline,
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// The partitions of `name`'s topics whose committed offset is not at
    /// their end, described.
    fn behind(&self, name: &str) -> Result<Vec<String>, Error> {
        let mut behind = Vec::new();
        for (topic, partition, offset) in self.committed(name)? {
            let (_, end) = self
                .reader
                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                .map_err(harness)?;
            if end > 0 && offset != Some(end) {
                let c = offset.map_or("nothing".to_owned(), |o| o.to_string());
                behind.push(format!("{topic}[{partition}] committed {c} of {end}"));
            }
        }
        Ok(behind)
    }

    /// The committed offsets of the subscriber named `name`: (topic,
    /// partition, offset), `None` where nothing is committed.
    pub fn committed(&self, name: &str) -> Result<Vec<(String, i32, Option<i64>)>, Error> {
        let (topics, group) = self
            .running
            .subscriber_topics(name)
            .ok_or_else(|| Error::Harness(format!("no subscriber named `{name}` runs here")))?;
        let mut tpl = TopicPartitionList::new();
        for topic in &topics {
            for p in 0..self.partitions_of(topic)? {
                tpl.add_partition(topic, p);
            }
        }
        let mut groups = self
            .groups
            .lock()
            .map_err(|_| Error::Harness("a reader panicked".into()))?;
        let consumer = match groups.entry(group) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let c: BaseConsumer = reader_config(&self.bootstrap, e.key()).create().map_err(harness)?;
                e.insert(c)
            }
        };
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .map_err(harness)?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_owned(), e.partition(), offset)
            })
            .collect())
    }

    fn partitions_of(&self, topic: &str) -> Result<i32, Error> {
        let metadata = self
            .reader
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(harness)?;
        Ok(metadata.topics().first().map_or(0, |t| t.partitions().len() as i32))
    }

    /// Waits until `topic` holds at least `n` messages and returns them all
    /// (every partition from the start, in partition then offset order):
    /// replies, dead letters with their `kconc-*` headers, anything sent.
    pub async fn read(&self, topic: &str, n: usize) -> Result<Vec<Message>, Error> {
        let started = Instant::now();
        let partitions = self.partitions_of(topic)?;
        let consumer = &self.reader;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(harness)?;
        }
        consumer.assign(&tpl).map_err(harness)?;
        let mut read: Vec<Message> = Vec::new();
        loop {
            while let Some(polled) = consumer.poll(Duration::ZERO) {
                let m = polled.map_err(harness)?;
                let mut msg = Message::new(m.topic(), m.partition(), m.offset());
                if let Some(k) = m.key() {
                    msg = msg.with_key(k);
                }
                if let Some(p) = m.payload() {
                    msg = msg.with_payload(p);
                }
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        msg = msg.with_header(h.key, h.value.map(<[u8]>::to_vec));
                    }
                }
                read.push(msg);
            }
            if read.len() >= n {
                consumer.unassign().map_err(harness)?;
                read.sort_by_key(|m| (m.partition(), m.offset()));
                return Ok(read);
            }
            if started.elapsed() > self.deadline {
                consumer.unassign().map_err(harness)?;
                return Err(Error::Harness(format!(
                    "`{topic}`: {} of {n} messages after {:?}",
                    read.len(),
                    self.deadline
                )));
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Shuts the subscribers down (drain, final commit, shutdown hooks).
    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

fn harness(e: impl Into<BoxError>) -> Error {
    Error::Harness(e.into().to_string())
}

/// A consumer of the embedded cluster that reads what it is assigned (and
/// commits nothing), in group `group`.
fn reader_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.error.backoff.ms", "10");
    c
}

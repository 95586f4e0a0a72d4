//! Helpers for tests, demos and benchmarks of kconc programs:
//!
//! - [`TestApp`]: the program's subscribers in-process on a fresh embedded
//!   cluster, with messages sent in, waits with a deadline, and what they
//!   published read back;
//! - [`message`], [`context`] and [`arg`]: a handler's arguments built from
//!   a message, to call a handler directly in a plain unit test;
//! - [`TestProducer`]: a producer that waits instead of failing when its
//!   queue is full and says which deliveries failed;
//! - [`end_offsets`] and [`committed_offsets`].
//!
//! Not for production paths: the producer and the offset readers block the
//! calling thread.
//!
//! ```no_run
//! # fn f() -> Result<(), kconc_runtime::Error> {
//! use kconc_runtime::testing::{committed_offsets, TestProducer};
//! let producer = TestProducer::new("localhost:9092")?;
//! for i in 0..100 {
//!     producer.send("orders", Some(i % 4), Some(format!("user-{i}").as_bytes()), b"{}")?;
//! }
//! let ends = producer.flush(std::time::Duration::from_secs(30))?;
//! let committed = committed_offsets("localhost:9092", "billing", "orders", 4)?;
//! # let _ = (ends, committed);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message as _};

mod harness;
#[cfg(feature = "otel")]
mod otlp;

pub use harness::{TestApp, TestMessage, TestRun};
#[cfg(feature = "otel")]
pub use otlp::OtlpReceiver;

pub use crate::embedded::{commit_with_metadata, committed_finished, committed_offsets};
use crate::error::Error;

/// Where each delivery went, and how many failed.
#[derive(Default)]
struct Deliveries {
    /// Per topic, per partition: one past the highest offset delivered (a
    /// short list: a test writes to few topics, and a delivery finds its
    /// own without allocating).
    ends: Mutex<Vec<(String, Vec<i64>)>>,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let (topic, Ok(p)) = (m.topic(), usize::try_from(m.partition())) else {
                    return;
                };
                if let Ok(mut ends) = self.ends.lock() {
                    let i = match ends.iter().position(|(t, _)| t == topic) {
                        Some(i) => i,
                        None => {
                            ends.push((topic.to_owned(), Vec::new()));
                            ends.len() - 1
                        }
                    };
                    let partitions = &mut ends[i].1;
                    if partitions.len() <= p {
                        partitions.resize(p + 1, 0);
                    }
                    partitions[p] = partitions[p].max(m.offset() + 1);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A producer for tests and demos: [`send`](Self::send) waits while
/// librdkafka's queue is full instead of failing, and
/// [`flush`](Self::flush) fails if any delivery failed.
pub struct TestProducer {
    producer: BaseProducer<Deliveries>,
    sent: AtomicU64,
}

impl std::fmt::Debug for TestProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestProducer").finish_non_exhaustive()
    }
}

impl TestProducer {
    /// A producer of `bootstrap` with librdkafka's defaults.
    pub fn new(bootstrap: &str) -> Result<Self, Error> {
        Self::with_properties(bootstrap, &[])
    }

    /// A producer of `bootstrap` with librdkafka `properties` (for example
    /// `("linger.ms", "20")` or `("enable.idempotence", "true")`).
    pub fn with_properties(bootstrap: &str, properties: &[(&str, &str)]) -> Result<Self, Error> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let producer = config
            .create_with_context(Deliveries::default())
            .map_err(|e| Error::Produce(format!("cannot create the producer: {e}")))?;
        Ok(TestProducer {
            producer,
            sent: AtomicU64::new(0),
        })
    }

    /// Queues one record (to `partition`, or to the one the partitioner
    /// picks), waiting while the queue is full. Fails on anything else
    /// librdkafka refuses (an unknown topic or partition, a record too large).
    pub fn send(&self, topic: &str, partition: Option<i32>, key: Option<&[u8]>, payload: &[u8]) -> Result<(), Error> {
        self.send_with_headers(topic, partition, key, payload, &[])
    }

    /// [`send`](Self::send) with headers.
    pub fn send_with_headers(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                owned = owned.insert(Header { key: k, value: Some(v) });
            }
            record = record.headers(owned);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    // Delivery reports are served now and then (and while
                    // the queue is full), not after every record.
                    if self.sent.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
                        self.producer.poll(Duration::ZERO);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => return Err(Error::Produce(format!("cannot send to `{topic}`: {e}"))),
            }
        }
    }

    /// Waits up to `timeout` until everything sent is delivered; fails if
    /// that takes longer or any delivery failed. Returns, per (topic,
    /// partition) delivered to, one past the highest offset delivered (the
    /// partition's end, when nothing else writes to it).
    pub fn flush(&self, timeout: Duration) -> Result<BTreeMap<(String, i32), i64>, Error> {
        self.producer
            .flush(timeout)
            .map_err(|e| Error::Produce(format!("flush: {e}")))?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(Error::Produce(format!("{failed} message(s) were not delivered")));
        }
        Ok(self.delivered())
    }

    /// What [`flush`](Self::flush) returns, so far.
    pub fn delivered(&self) -> BTreeMap<(String, i32), i64> {
        let Ok(ends) = self.producer.context().ends.lock() else {
            return BTreeMap::new();
        };
        ends.iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, end)| **end > 0)
                    .map(move |(p, end)| ((topic.clone(), p as i32), *end))
            })
            .collect()
    }
}

/// Each partition's end offset (its high watermark) for partitions
/// `0..partitions` of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<i64>, Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| Error::Produce(format!("cannot create a metadata consumer: {e}")))?;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .map_err(|e| Error::Produce(format!("cannot read the end of {topic}[{p}]: {e}")))
        })
        .collect()
}

/// The subscribers `#[subscriber]` registered in this program, built (what
/// `App::from_registry` runs).
pub fn registered() -> Vec<crate::Subscriber> {
    crate::registry::registered()
}

/// A message for calling a handler directly in a unit test; add a key,
/// payload and headers with [`Message::with_key`](crate::Message::with_key), [`Message::with_payload`](crate::Message::with_payload)
/// and [`Message::with_header`](crate::Message::with_header).
pub fn message(topic: &str, partition: i32, offset: i64) -> crate::Message {
    crate::Message::new(topic, partition, offset)
}

/// A [`Context`](crate::Context) for calling a handler directly: the
/// subscriber's name and group, and the state its `State<T>` arguments get.
#[derive(Debug)]
pub struct TestContext {
    subscriber: String,
    group: String,
    states: crate::state::States,
    reply: Option<String>,
}

/// A context builder for subscriber `subscriber` (its group too, unless
/// [`TestContext::group`] says otherwise).
pub fn context(subscriber: &str) -> TestContext {
    TestContext {
        subscriber: subscriber.to_owned(),
        group: subscriber.to_owned(),
        states: crate::state::States::default(),
        reply: None,
    }
}

impl TestContext {
    /// Its consumer group.
    #[must_use]
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_owned();
        self
    }

    /// A state value its handlers' `State<T>` arguments get.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// The context.
    pub fn build(self) -> crate::Context {
        crate::Context::new(
            std::sync::Arc::from(self.subscriber.as_str()),
            &self.group,
            tokio_util::sync::CancellationToken::new(),
            &ClientConfig::new(),
            self.states,
            self.reply.as_deref(),
        )
    }
}

/// Builds a handler argument of type `A` from `msg`, as the runtime does
/// before calling the handler: `arg::<Json<Order>>(&msg, &cx)`.
pub fn arg<A: crate::FromMessageOwned>(msg: &crate::Message, cx: &crate::Context) -> Result<A, crate::PayloadError> {
    A::from_message_owned(msg.clone(), cx)
}

/// Builds a batch handler's `Batch<T>` argument from `messages` (of one
/// partition, in offset order), as the runtime does before calling it:
/// `archive(batch::<Json<Order>>(msgs, &cx)?)`. A message that cannot be
/// built is an error here (the runtime fails it alone and hands the
/// handler the others).
pub fn batch<T: crate::FromMessageOwned>(
    messages: Vec<crate::Message>,
    cx: &crate::Context,
) -> Result<crate::Batch<T>, crate::PayloadError> {
    let (batch, mapping) = crate::Batch::build(messages, cx);
    match mapping.into_first_undecodable() {
        Some(error) => Err(error),
        None => Ok(batch),
    }
}

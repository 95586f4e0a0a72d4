//! The embedded broker: librdkafka's in-process mock cluster, so examples and
//! tests run on a machine with no Kafka. It is a real Kafka-protocol broker
//! (consumer groups, offset commits, fault injection) but keeps everything in
//! memory and disappears with the process. Not for production.

use rdkafka::consumer::DefaultConsumerContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer as _};
use rdkafka::ClientConfig;

use crate::error::Error;

/// An in-process mock Kafka cluster.
///
/// Created by [`EmbeddedCluster::start`], or by an [`App`](crate::App) whose
/// brokers are `embedded`. [`EmbeddedCluster::mock`] gives rdkafka's
/// [`MockCluster`] for fault injection (broker down, request errors, ...).
pub struct EmbeddedCluster {
    // The cluster lives as long as this client (it was created with
    // `test.mock.num.brokers`), which never sends anything itself.
    owner: BaseProducer<DefaultProducerContext>,
    bootstrap: String,
    /// A file holding the bootstrap address while the cluster lives.
    address_file: Option<AddressFile>,
}

/// A file that holds the cluster's address; removed when the cluster goes.
struct AddressFile(std::path::PathBuf);

impl Drop for AddressFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl EmbeddedCluster {
    /// Starts a mock cluster of `brokers` brokers (at least 1).
    ///
    /// Consumer groups form at once: the usual 3 s initial rebalance delay of
    /// the mock is turned off.
    pub fn start(brokers: u32) -> Result<Self, Error> {
        let owner: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.max(1).to_string())
            .create()
            .map_err(|e| Error::Embedded(e.to_string()))?;
        let bootstrap = owner
            .client()
            .mock_cluster()
            .ok_or_else(|| Error::Embedded("librdkafka did not create a mock cluster".into()))?
            .bootstrap_servers();
        no_initial_rebalance_delay(&owner);
        Ok(Self {
            owner,
            bootstrap,
            address_file: None,
        })
    }

    /// Writes the bootstrap address (and a newline) to `path`, for another
    /// process to produce to the cluster (`--embedded-address-file`); the
    /// file is removed when the cluster stops. It appears whole: written
    /// beside it, then renamed.
    pub fn write_address_file(&mut self, path: &std::path::Path) -> Result<(), Error> {
        let fail = |e: std::io::Error| Error::Config(format!("--embedded-address-file `{}`: {e}", path.display()));
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        std::fs::write(&partial, format!("{}\n", self.bootstrap)).map_err(fail)?;
        std::fs::rename(&partial, path).map_err(fail)?;
        self.address_file = Some(AddressFile(path.to_owned()));
        Ok(())
    }

    /// The `bootstrap.servers` value that reaches the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Makes the cluster answer the next requests of the API numbered
    /// `api_key` with `errors`, one each: as [`MockCluster::request_errors`],
    /// for APIs its `RDKafkaApiKey` does not list (ConsumerGroupHeartbeat is
    /// 68).
    #[doc(hidden)]
    pub fn request_errors_by_number(&self, api_key: i16, errors: &[rdkafka::types::RDKafkaRespErr]) {
        crate::engine::mock_request_errors(self.owner.client(), api_key, errors);
    }

    /// Makes the cluster leave the API numbered `api_key` out of its
    /// ApiVersions answers to connections made from now on, as a broker
    /// without it would (ConsumerGroupHeartbeat, the consumer group
    /// protocol's, is 68).
    #[doc(hidden)]
    pub fn without_api(&self, api_key: i16) {
        crate::engine::mock_without_api(self.owner.client(), api_key);
    }

    /// The session timeout and heartbeat interval of the cluster's KIP-848
    /// consumer groups (`group_protocol = "consumer"`), which under that
    /// protocol are the broker's, not the client's (the mock's defaults are
    /// 30 s and 3 s).
    #[doc(hidden)]
    pub fn consumer_group_timing(&self, session_timeout: std::time::Duration, heartbeat_interval: std::time::Duration) {
        let ms = |d: std::time::Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        crate::engine::mock_consumer_group_timing(self.owner.client(), ms(session_timeout), ms(heartbeat_interval));
    }

    /// rdkafka's handle on the cluster, for topic creation and fault injection.
    pub fn mock(&self) -> Result<MockCluster<'_, DefaultProducerContext>, Error> {
        self.owner
            .client()
            .mock_cluster()
            .ok_or_else(|| Error::Embedded("the embedded cluster's client has no mock cluster".into()))
    }

    /// Creates a topic with `partitions` partitions (the mock cluster has no
    /// CreateTopics API; this calls it directly).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        self.mock()?
            .create_topic(topic, partitions, 1)
            .map_err(|e| Error::Embedded(format!("cannot create topic `{topic}`: {e}")))
    }

    /// A client configuration pointing at this cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// Reads the committed offsets of `group` for `partitions` partitions of
    /// `topic` (`None` where nothing is committed), without joining the group.
    pub fn committed_offsets(&self, group: &str, topic: &str, partitions: i32) -> Result<Vec<Option<i64>>, Error> {
        committed_offsets(&self.bootstrap, group, topic, partitions)
    }
}

/// Reads the committed offsets of `group` on any cluster (see
/// [`EmbeddedCluster::committed_offsets`]).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>, Error> {
    use rdkafka::Offset;
    let got = fetch_committed(bootstrap, group, topic, partitions)?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect())
}

/// Commits `offset` with `metadata` for partition `partition` of `topic` in
/// `group`, as another client would: from outside the group (no member,
/// generation -1), which Kafka accepts while the group has no members under
/// either group protocol. The mock cluster refuses that
/// (UNKNOWN_MEMBER_ID) once the group has had members, so then the client
/// joins the group with the classic protocol (it must have no other
/// members), commits, and leaves. To test what another client's metadata
/// does, or to set a group's starting point.
pub fn commit_with_metadata(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> Result<(), Error> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::{Offset, TopicPartitionList};
    let mut tpl = TopicPartitionList::new();
    let mut el = tpl.add_partition(topic, partition);
    el.set_offset(Offset::Offset(offset))
        .map_err(|e| Error::Embedded(e.to_string()))?;
    el.set_metadata(metadata);
    let commit = |consumer: &BaseConsumer<DefaultConsumerContext>| consumer.commit(&tpl, CommitMode::Sync);
    let failed = |e: KafkaError| Error::Embedded(format!("cannot commit for `{group}`: {e}"));
    let client = |config: &mut ClientConfig| -> Result<BaseConsumer<DefaultConsumerContext>, Error> {
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| Error::Embedded(e.to_string()))
    };
    // From outside first: a classic member would leave the mock cluster a
    // classic group, whose commits it then takes for those of a later
    // consumer-protocol group (it answers them UNKNOWN_MEMBER_ID,
    // rdkafka_mock_handlers.c).
    match commit(&client(&mut ClientConfig::new())?) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownMemberId)) => {}
        done => return done.map_err(failed),
    }
    let consumer = client(
        ClientConfig::new()
            // The group's next rebalance waits for members this long (the
            // mock cluster waits `session.timeout.ms - 1 s`): keep it short.
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "500"),
    )?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::Embedded(e.to_string()))?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        if std::time::Instant::now() > until {
            return Err(Error::Embedded(format!("`{group}`: no assignment within 30 s")));
        }
        let _ = consumer.poll(std::time::Duration::from_millis(50));
    }
    commit(&consumer).map_err(failed)
}

/// Each partition's committed offset with how many offsets above it its
/// metadata lists as finished (0 when it has none kconc can read), for
/// partitions `0..partitions` of `topic` in `group`; `None` where nothing is
/// committed.
pub fn committed_finished(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<(i64, u64)>>, Error> {
    let got = fetch_committed(bootstrap, group, topic, partitions)?;
    let listed = crate::engine::committed_metadata(&got);
    Ok((0..partitions)
        .map(|p| {
            let (_, _, offset, metadata) = listed.iter().find(|(t, q, ..)| t == topic && *q == p)?;
            (*offset >= 0).then(|| (*offset, crate::engine::finished_count(metadata, *offset)))
        })
        .collect())
}

/// The committed offsets (with their metadata) of `group` for partitions
/// `0..partitions` of `topic`, read without joining the group.
fn fetch_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<rdkafka::TopicPartitionList, Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer<DefaultConsumerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| Error::Embedded(e.to_string()))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    consumer
        .committed_offsets(tpl, std::time::Duration::from_secs(10))
        .map_err(|e| Error::Embedded(format!("cannot read committed offsets of `{group}`: {e}")))
}

fn no_initial_rebalance_delay(owner: &BaseProducer<DefaultProducerContext>) {
    crate::engine::no_initial_rebalance_delay(owner.client());
}

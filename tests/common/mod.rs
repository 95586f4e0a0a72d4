//! Shared helpers of the integration tests: an embedded (in-process,
//! librdkafka mock) cluster per test, a producer that records partition ends,
//! a recorder of what handlers saw, and waiting for a state with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use kconc_runtime::testing::TestProducer;
use kconc_runtime::{App, EmbeddedCluster, Message, StatsSnapshot};

/// How long a test waits for a state before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// An app on `bootstrap` with the mock cluster's rebalance wait made short:
/// the mock waits `session.timeout.ms - 1 s` for members on every rebalance
/// after the first join (45 s with librdkafka's default). Under the group
/// protocol the run asks for (`KCONC_TEST_GROUP_PROTOCOL=consumer`, see
/// [`consumer_protocol`]) the session is the broker's: [`cluster`] sets it.
pub fn test_app(bootstrap: &str) -> App {
    let app = App::new().brokers(bootstrap);
    if consumer_protocol() {
        app.group_protocol(kconc_runtime::GroupProtocol::Consumer)
    } else {
        app.property("session.timeout.ms", "3000")
            .property("heartbeat.interval.ms", "500")
    }
}

/// Whether this run's subscribers speak KIP-848's group protocol
/// (`KCONC_TEST_GROUP_PROTOCOL=consumer`): `scripts/test` runs the tests of
/// rebalances, revokes, commits and shutdown once more so.
pub fn consumer_protocol() -> bool {
    std::env::var("KCONC_TEST_GROUP_PROTOCOL").is_ok_and(|p| p == "consumer")
}

/// `app` with property `key` (one of the classic protocol's client-side
/// group settings, refused under `consumer`), unless the run is under the
/// consumer protocol, where the broker's settings ([`cluster`]) stand in.
pub fn classic_only(app: App, key: &str, value: &str) -> App {
    if consumer_protocol() {
        app
    } else {
        app.property(key, value)
    }
}

/// [`classic_only`] for a subscriber's own property.
pub fn classic_only_sub(sub: kconc_runtime::Subscriber, key: &str, value: &str) -> kconc_runtime::Subscriber {
    if consumer_protocol() {
        sub
    } else {
        sub.property(key, value)
    }
}

/// Under the consumer protocol, the cluster's group session timeout and
/// heartbeat interval, as `test_app` sets the client's under classic.
fn consumer_group_timing(c: &EmbeddedCluster) {
    if consumer_protocol() {
        c.consumer_group_timing(Duration::from_millis(3_000), Duration::from_millis(500));
    }
}

/// How many messages the new owner of revoked partitions may handle again
/// that the old member (`stats`, running `concurrency` handlers and
/// committing every `commit_batch` messages) had already handled.
///
/// When the revoke's commit succeeds, only what was in flight when the
/// revoke began: its handlers are awaited, and their commit is made, before
/// the partitions go. When the broker refuses that commit, the new owner
/// starts at the last commit that succeeded, so everything finished since
/// comes again. librdkafka's mock coordinator refuses every OffsetCommit
/// while the group is joining (`rd_kafka_mock_cgrp_classic_check_state`),
/// and it holds a join for `session.timeout.ms - 1 s`, so the periodic
/// commits of that window fail as well (Kafka accepts them from the current
/// generation). Each refused periodic commit stands for at most one batch.
pub fn redelivery_bound(stats: &StatsSnapshot, concurrency: usize, commit_batch: usize) -> usize {
    if stats.revoke_commit_failures == 0 {
        concurrency
    } else {
        concurrency + commit_batch * (1 + stats.commit_failures as usize)
    }
}

/// An embedded cluster with one topic of `partitions` partitions.
/// Logs go to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=kconc_runtime=debug`).
pub fn cluster(topic: &str, partitions: i32) -> EmbeddedCluster {
    if std::env::var_os("RUST_LOG").is_some() {
        kconc_runtime::init_tracing();
    }
    let c = EmbeddedCluster::start(1).expect("start the embedded cluster");
    c.create_topic(topic, partitions).expect("create the topic");
    consumer_group_timing(&c);
    c
}

/// An embedded cluster of three brokers with one topic whose partitions
/// broker 1 leads, and `group`'s coordinator on broker `coordinator`: a
/// fault injected at the coordinator (a slow round trip, say) then slows
/// the group's requests, not the fetches.
pub fn cluster_with_coordinator(topic: &str, partitions: i32, group: &str, coordinator: i32) -> EmbeddedCluster {
    if std::env::var_os("RUST_LOG").is_some() {
        kconc_runtime::init_tracing();
    }
    let c = EmbeddedCluster::start(3).expect("start the embedded cluster");
    c.create_topic(topic, partitions).expect("create the topic");
    consumer_group_timing(&c);
    {
        let mock = c.mock().expect("the mock cluster");
        for p in 0..partitions {
            mock.partition_leader(topic, p, Some(1)).expect("partition leader");
        }
        mock.coordinator(
            kconc_runtime::rdkafka::mocking::MockCoordinator::Group(group.into()),
            coordinator,
        )
        .expect("group coordinator");
    }
    c
}

/// Produces `count` messages round-robin over the partitions, key `k{i % keys}`,
/// payload `i`, and returns each partition's end offset as the broker reports it.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, count: usize, keys: usize) -> Vec<i64> {
    let producer = TestProducer::with_properties(bootstrap, &[("linger.ms", "5")]).expect("create the producer");
    for i in 0..count {
        let key = format!("k{}", i % keys.max(1));
        let partition = (i % partitions as usize) as i32;
        producer
            .send(topic, Some(partition), Some(key.as_bytes()), i.to_string().as_bytes())
            .expect("produce");
    }
    producer.flush(Duration::from_secs(30)).expect("flush the producer");
    end_offsets(bootstrap, topic, partitions)
}

/// Produces `records` (key, payload) in order to one partition and returns
/// the partition's end offset.
pub fn produce_records(bootstrap: &str, topic: &str, partition: i32, records: &[(&str, &str)]) -> i64 {
    let producer: BaseProducer = kconc_runtime::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("create the producer");
    for (key, payload) in records {
        let record = BaseRecord::to(topic).key(*key).payload(*payload).partition(partition);
        if let Err((e, _)) = producer.send(record) {
            panic!("produce to {topic}[{partition}]: {e}");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush the producer");
    end_offsets(bootstrap, topic, partition + 1)[partition as usize]
}

/// Each partition's high watermark (its end offset).
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    kconc_runtime::testing::end_offsets(bootstrap, topic, partitions).expect("read the partition ends")
}

/// The committed offsets of `group` (None where nothing is committed).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    kconc_runtime::testing::committed_offsets(bootstrap, group, topic, partitions).expect("read committed offsets")
}

/// What `committed` reads once everything up to `ends` is committed.
pub fn all_committed(ends: &[i64]) -> Vec<Option<i64>> {
    ends.iter().map(|e| Some(*e)).collect()
}

/// Waits until `cond` holds, checking every 10 ms; panics with `what` after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async variant of [`wait_until`], for use inside tokio tests.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What handlers saw: every (partition, offset) with how often it was
/// handled, handlers running now and the most ever running at once.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: Mutex<HashMap<(i32, i64), usize>>,
    order: Mutex<Vec<(i32, i64)>>,
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Marks a handler as running until dropped.
pub struct Running<'a>(&'a Recorder);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Call at the start of a handler; keep the guard until it returns.
    pub fn start(&self, msg: &Message) -> Running<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        *self
            .seen
            .lock()
            .unwrap()
            .entry((msg.partition(), msg.offset()))
            .or_default() += 1;
        self.order.lock().unwrap().push((msg.partition(), msg.offset()));
        Running(self)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How often each (partition, offset) was handled.
    pub fn counts(&self) -> HashMap<(i32, i64), usize> {
        self.seen.lock().unwrap().clone()
    }

    /// Offsets handled per partition, sorted.
    pub fn by_partition(&self) -> BTreeMap<i32, Vec<i64>> {
        let mut m: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for &(p, o) in self.seen.lock().unwrap().keys() {
            m.entry(p).or_default().push(o);
        }
        m.values_mut().for_each(|v| v.sort_unstable());
        m
    }

    /// The first offset of each partition not handled, counting from 0:
    /// where a contiguous-prefix commit of this recorder's work would stand.
    pub fn prefix(&self, partitions: i32) -> Vec<i64> {
        let seen = self.seen.lock().unwrap();
        (0..partitions)
            .map(|p| {
                let mut o = 0;
                while seen.contains_key(&(p, o)) {
                    o += 1;
                }
                o
            })
            .collect()
    }
}

/// Asserts every offset below each partition's end was handled at least once.
pub fn assert_all_handled(counts: &HashMap<(i32, i64), usize>, ends: &[i64]) {
    for (p, &end) in ends.iter().enumerate() {
        let missing: Vec<i64> = (0..end).filter(|o| !counts.contains_key(&(p as i32, *o))).collect();
        assert!(missing.is_empty(), "partition {p}: offsets never handled: {missing:?}");
    }
}

/// Writes a record batch of `count` records that librdkafka cannot read to
/// `topic[partition]` on a mock cluster, with a hand-made ProduceRequest
/// (librdkafka's producer only writes good batches): its attributes say
/// gzip, its records are not gzip. The mock stores batches as sent, and a
/// consumer fetching it gets `_BAD_COMPRESSION` at its first offset, which
/// is returned.
pub fn produce_unreadable_batch(bootstrap: &str, topic: &str, partition: i32, count: i32) -> i64 {
    use std::io::{Read as _, Write as _};
    fn crc32c(data: &[u8]) -> u32 {
        let mut crc: u32 = !0;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i16).to_be_bytes());
        out.extend(s.as_bytes());
    }
    // RecordBatch v2: the part its CRC covers, from the attributes on.
    let mut covered = Vec::new();
    covered.extend(1i16.to_be_bytes()); // attributes: gzip
    covered.extend((count - 1).to_be_bytes()); // last offset delta
    covered.extend(1_700_000_000_000i64.to_be_bytes()); // first timestamp
    covered.extend(1_700_000_000_000i64.to_be_bytes()); // max timestamp
    covered.extend((-1i64).to_be_bytes()); // producer id
    covered.extend((-1i16).to_be_bytes()); // producer epoch
    covered.extend((-1i32).to_be_bytes()); // base sequence
    covered.extend(count.to_be_bytes()); // records
    covered.extend(b"these records are not a gzip stream at all");
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset (the broker assigns it)
    batch.extend(((4 + 1 + 4 + covered.len()) as i32).to_be_bytes()); // batch length
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&covered).to_be_bytes());
    batch.extend(covered);
    // ProduceRequest v3, one topic, one partition.
    let mut req = Vec::new();
    req.extend(0i16.to_be_bytes()); // Produce
    req.extend(3i16.to_be_bytes()); // version
    req.extend(1i32.to_be_bytes()); // correlation id
    string(&mut req, "kconc-tests");
    req.extend((-1i16).to_be_bytes()); // no transactional id
    req.extend(1i16.to_be_bytes()); // acks
    req.extend(5_000i32.to_be_bytes()); // timeout
    req.extend(1i32.to_be_bytes());
    string(&mut req, topic);
    req.extend(1i32.to_be_bytes());
    req.extend(partition.to_be_bytes());
    req.extend((batch.len() as i32).to_be_bytes());
    req.extend(batch);
    // The mock leads every partition from each of its brokers' addresses.
    let addr = bootstrap.split(',').next().expect("a bootstrap address");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the mock broker");
    s.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
    s.write_all(&req).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).unwrap();
    // correlation id, topics, name, partitions, partition, error, base offset
    let mut at = 4 + 4;
    let name_len = i16::from_be_bytes([resp[at], resp[at + 1]]) as usize;
    at += 2 + name_len + 4 + 4;
    let error = i16::from_be_bytes([resp[at], resp[at + 1]]);
    assert_eq!(error, 0, "the mock broker refused the batch");
    i64::from_be_bytes(resp[at + 2..at + 10].try_into().unwrap())
}

/// Starts an app whose subscribers run in the `FirstPoll` mode the test
/// run asks for: `KCONC_TEST_FIRST_POLL` (`poll_thread`, `auto`), else each
/// subscriber's own. `scripts/test` runs the failure tests once more with
/// `poll_thread`, since that opt-in changes where user code runs.
pub trait StartInTestMode {
    fn start_in_test_mode(self) -> Result<kconc_runtime::Running, kconc_runtime::Error>;
}

impl StartInTestMode for App {
    fn start_in_test_mode(self) -> Result<kconc_runtime::Running, kconc_runtime::Error> {
        in_test_mode(self).start()
    }
}

/// `app` with its subscribers in the `FirstPoll` mode the test run asks for
/// (`KCONC_TEST_FIRST_POLL`), else their own.
pub fn in_test_mode(app: App) -> App {
    let app = if consumer_protocol() {
        app.group_protocol(kconc_runtime::GroupProtocol::Consumer)
    } else {
        app
    };
    match std::env::var("KCONC_TEST_FIRST_POLL") {
        Ok(mode) if !mode.is_empty() => {
            let set = format!("*.first_poll={mode}");
            let cli = kconc_runtime::Cli::try_from_iter(["kconc-test", "--set", &set]).expect("a valid --set");
            app.configure_with_env(&cli, Vec::new())
        }
        _ => app,
    }
}

/// An example's binary (`service`, say), built (a no-op when it is fresh)
/// with the cargo that runs this test.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    example_binary_with(name, &[])
}

/// [`example_binary`], built with `features` (the test's own features
/// among them, so that nothing else is built again).
pub fn example_binary_with(name: &str, features: &[&str]) -> std::path::PathBuf {
    let mut args = vec!["build", "-q", "--example", name];
    let features = features.join(",");
    if !features.is_empty() {
        args.extend(["--features", &features]);
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the {name} example failed");
    let deps = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let profile_dir = deps.parent().and_then(|d| d.parent()).expect("the profile directory");
    profile_dir.join("examples").join(name)
}

/// A histogram's buckets (le, value) and its `_count`, as read.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>);

/// Checks `text` against the OpenMetrics 1.0 text format strictly, as the
/// reference parser does: each family's metadata once, before its samples;
/// a family's samples together; sample names that belong to their family's
/// type; well-formed, unique label sets; histograms whose buckets rise to
/// `+Inf` and match `_count`; `# EOF` at the end. Returns what is wrong.
pub fn openmetrics_errors(text: &str) -> Vec<String> {
    use std::collections::HashSet;
    let mut errors = Vec::new();
    let mut seen_families: HashSet<String> = HashSet::new();
    // The current family: name, type, whether a sample came, metadata seen.
    let mut family: Option<(String, String, bool, HashSet<String>)> = None;
    let mut samples: HashSet<String> = HashSet::new();
    // Histogram series: labels (without le) -> (buckets, count).
    let mut buckets: BTreeMap<String, HistogramSeries> = BTreeMap::new();
    let check_histograms = |buckets: &mut BTreeMap<String, HistogramSeries>, errors: &mut Vec<String>| {
        for (series, (b, count)) in std::mem::take(buckets) {
            if b.last().map(|(le, _)| *le) != Some(f64::INFINITY) {
                errors.push(format!("histogram {series}: no le=\"+Inf\" bucket"));
            }
            if b.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                errors.push(format!("histogram {series}: buckets not rising"));
            }
            if count != b.last().map(|(_, v)| *v) {
                errors.push(format!("histogram {series}: _count {count:?} is not the +Inf bucket"));
            }
        }
    };
    let Some(body) = text.strip_suffix("# EOF\n").or_else(|| text.strip_suffix("# EOF")) else {
        return vec!["does not end with `# EOF`".to_owned()];
    };
    for (n, line) in body.lines().enumerate() {
        let at = n + 1;
        let mut bad = |what: String| errors.push(format!("line {at}: {what}: `{line}`"));
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !matches!(kind, "TYPE" | "HELP" | "UNIT") {
                bad("unknown comment".into());
                continue;
            }
            let same = family.as_ref().is_some_and(|f| f.0 == name);
            if !same {
                if seen_families.contains(name) {
                    bad(format!("metadata of family {name} again, after other families"));
                }
                check_histograms(&mut buckets, &mut errors);
                seen_families.insert(name.to_owned());
                family = Some((name.to_owned(), "unknown".to_owned(), false, HashSet::new()));
            }
            let Some(f) = family.as_mut() else { continue };
            if f.2 {
                errors.push(format!("line {at}: metadata after samples of {name}: `{line}`"));
            }
            if !f.3.insert(kind.to_owned()) {
                errors.push(format!("line {at}: second {kind} of {name}: `{line}`"));
            }
            if kind == "TYPE" {
                f.1 = parts.next().unwrap_or("").to_owned();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            bad("not a sample or metadata".into());
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let Some(f) = family.as_mut() else {
            bad("sample before any metadata".into());
            continue;
        };
        let suffixes: &[&str] = match f.1.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        let suffix = name.strip_prefix(f.0.as_str());
        if !suffix.is_some_and(|s| suffixes.contains(&s)) {
            bad(format!("sample not of family {} ({})", f.0, f.1));
        }
        f.2 = true;
        let rest = &line[name_end..];
        let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some(close) = inner.find("} ") else {
                bad("unclosed labels".into());
                continue;
            };
            (&inner[..close], &inner[close + 2..])
        } else {
            ("", rest.trim_start())
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut l = labels;
        while !l.is_empty() {
            let Some((k, v)) = l.split_once("=\"") else {
                bad("malformed label".into());
                break;
            };
            let valid = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                bad(format!("bad label name {k}"));
            }
            let mut end = None;
            let mut escaped = false;
            for (i, c) in v.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                bad("unterminated label value".into());
                break;
            };
            if pairs.iter().any(|(pk, _)| pk == k) {
                bad(format!("label {k} twice"));
            }
            pairs.push((k.to_owned(), v[..end].to_owned()));
            l = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
        }
        let value = value.split(' ').next().unwrap_or("");
        let parsed = match value {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            v => v.parse::<f64>().ok(),
        };
        let Some(v) = parsed else {
            bad("bad value".into());
            continue;
        };
        pairs.sort();
        if !samples.insert(format!("{name}{pairs:?}")) {
            bad("the same sample twice".into());
        }
        if f.1 == "histogram" {
            let series: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "le").collect();
            let series = format!("{}{series:?}", f.0);
            let entry = buckets.entry(series).or_default();
            if name.ends_with("_bucket") {
                let le = pairs.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str());
                match le.map(|le| {
                    if le == "+Inf" {
                        Ok(f64::INFINITY)
                    } else {
                        le.parse::<f64>()
                    }
                }) {
                    Some(Ok(le)) => entry.0.push((le, v)),
                    _ => bad("bucket without a valid le".into()),
                }
            } else if name.ends_with("_count") {
                entry.1 = Some(v);
            }
        }
    }
    check_histograms(&mut buckets, &mut errors);
    errors
}

/// Collects a tracing event's or span's fields as text, for tests that
/// check what kconc logs.
pub struct CollectFields<'a>(pub &'a mut BTreeMap<String, String>);

impl tracing::field::Visit for CollectFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// The skeleton most integration tests share: a topic of `parts`
/// partitions on a cluster of its own holding `n` records over `keys`
/// keys, a [`Recorder`] of what handlers saw, and the waits and checks at
/// the end (every record handled, the group committed to the ends).
pub struct Scenario {
    pub topic: &'static str,
    pub group: &'static str,
    pub parts: i32,
    pub n: usize,
    pub cluster: EmbeddedCluster,
    /// Each partition's end offset after the records were produced.
    pub ends: Vec<i64>,
    pub rec: Arc<Recorder>,
}

impl Scenario {
    /// The topic, its `n` records over `keys` keys, and a fresh recorder.
    pub fn new(topic: &'static str, group: &'static str, parts: i32, n: usize, keys: usize) -> Self {
        let cluster = cluster(topic, parts);
        let ends = produce(cluster.bootstrap_servers(), topic, parts, n, keys);
        Self {
            topic,
            group,
            parts,
            n,
            cluster,
            ends,
            rec: Recorder::new(),
        }
    }

    pub fn bootstrap(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    /// A subscriber of the topic in the group, named after the topic, whose
    /// handler is recorded while it runs `work`.
    pub fn subscriber<F, Fut>(&self, work: F) -> kconc_runtime::Subscriber
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: kconc_runtime::IntoHandlerResult,
    {
        let (r, work) = (self.rec.clone(), Arc::new(work));
        kconc_runtime::Subscriber::new(self.topic, [self.topic], self.group, move |m: Message| {
            let (r, work) = (r.clone(), work.clone());
            async move {
                let _g = r.start(&m);
                work(m).await
            }
        })
    }

    /// Waits until every record was handled at least once.
    pub async fn wait_handled(&self) {
        wait_for("every message handled", DEADLINE, || self.rec.distinct() >= self.n).await;
    }

    /// Waits until the group's committed offsets are the partitions' ends.
    pub async fn wait_committed(&self) {
        let want = all_committed(&self.ends);
        wait_for("committed up to the ends", DEADLINE, || {
            committed(self.bootstrap(), self.group, self.topic, self.parts) == want
        })
        .await;
    }

    /// Every record was handled, none that does not exist.
    pub fn assert_all_handled(&self) {
        assert_all_handled(&self.rec.counts(), &self.ends);
    }
}

/// `GET path` with a plain HTTP/1.1 request; `None` when nothing listens.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    })
    .await
    .unwrap()
}

//! `kconc-e2e`: the program the end-to-end tests run against a real broker
//! (Tansu, see `scripts/broker`), as separate processes that can be killed.
//!
//! ```text
//! kconc-e2e produce --brokers B --topic T --partitions P --count N [--keys K] [--first-id I] [--rate MSGS_PER_S]
//! kconc-e2e consume --brokers B --topic T --group G --journal FILE [--status FILE]
//!                   [--concurrency 100] [--ordering unordered|key|partition] [--delay-ms 1-20]
//!                   [--commit-batch-size 100] [--shutdown-timeout-ms 20000] [--properties k=v,k=v]
//!                   [--commit-metadata finished|none] [--instance-id ID]
//!                   [--max-batch N] [--fail-offset O] [--store sqlite:PATH|postgres:URL]
//!                   [--group-protocol classic|consumer]
//!
//! kconc-e2e mock-broker --topic T --partitions P [--group-timing SESSION_MS,HEARTBEAT_MS]
//! ```
//!
//! `mock-broker` hosts librdkafka's mock cluster in this process, creates the
//! topic, prints `bootstrap ADDRESS` and serves until its standard input
//! closes: a second external broker, whose group coordinator (unlike Tansu
//! 0.6.0's) waits for every member to rejoin before completing a rebalance.
//! `--group-timing` sets its consumer-protocol groups' session timeout and
//! heartbeat interval (KIP-848 keeps them on the broker; librdkafka's mock
//! defaults to 30 s and 3 s).
//! A line `rtt MS` on its standard input makes it answer every request MS
//! milliseconds late (it prints `rtt MS` once set).
//!
//! `produce` sends message ids `first-id..first-id+count` as payloads with key
//! `k{id % keys}` to partition `(id % keys) % partitions` (so a key stays on
//! one partition), one record per batch (Tansu 0.6.0 skips the rest of a
//! batch when a fetch starts inside it), and prints each partition's end
//! offset as the delivery reports give it: `ends 12 40 ...`.
//!
//! `consume` runs one kconc subscriber until SIGTERM/SIGINT. Its handler
//! sleeps a random delay, then appends `id partition offset key start_ns
//! end_ns pid` to the journal and returns only once that line is on disk
//! (written and fsynced in batches), so an outside check can count what was
//! handled across kills and restarts. With `--status`, it rewrites that file
//! every 100 ms with its assigned partitions and counters.
//!
//! With `--store`, the subscriber is exactly-once into that database
//! (`store = "sql"`): each call also inserts a row `(id, partition, offset,
//! pid)` per message into the table `e2e_rows` through its `Tx`, and the
//! outside check counts the rows (the journal then lists attempts, some of
//! which a kill rolled back).

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kconc_runtime::testing::TestProducer;
use kconc_runtime::{App, GroupProtocol, Message, OrderingMode, Subscriber};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("produce") => Opts::parse(&args[1..]).and_then(|o| produce(&o)),
        Some("consume") => Opts::parse(&args[1..]).and_then(|o| consume(&o)),
        Some("mock-broker") => Opts::parse(&args[1..]).and_then(|o| mock_broker(&o)),
        _ => Err("usage: kconc-e2e produce|consume --brokers B --topic T ... (see the source's doc comment)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kconc-e2e: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, found `{flag}`"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Self(map))
    }

    fn str(&self, name: &str) -> Result<&str, String> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match (self.0.get(name), default) {
            (Some(v), _) => v.parse().map_err(|_| format!("--{name}: `{v}` is not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{name} is required")),
        }
    }
}

fn mock_broker(o: &Opts) -> Result<(), String> {
    let cluster = kconc_runtime::EmbeddedCluster::start(1).map_err(|e| e.to_string())?;
    cluster
        .create_topic(o.str("topic")?, o.num("partitions", None)?)
        .map_err(|e| e.to_string())?;
    if let Some(timing) = o.0.get("group-timing") {
        let ms = |v: Option<&str>| -> Result<Duration, String> {
            v.and_then(|v| v.trim().parse().ok())
                .map(Duration::from_millis)
                .ok_or_else(|| format!("--group-timing: `{timing}` is not SESSION_MS,HEARTBEAT_MS"))
        };
        let mut parts = timing.split(',');
        let (session, heartbeat) = (ms(parts.next())?, ms(parts.next())?);
        cluster.consumer_group_timing(session, heartbeat);
    }
    println!("bootstrap {}", cluster.bootstrap_servers());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Serve until the parent closes our standard input (or kills us),
    // taking commands from it meanwhile: `rtt MS` makes the broker answer
    // every request MS milliseconds late.
    for line in std::io::stdin().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(ms) = line.trim().strip_prefix("rtt ") {
            let ms: u64 = ms.parse().map_err(|_| format!("rtt: `{ms}` is not a number"))?;
            cluster
                .mock()
                .and_then(|m| {
                    m.broker_round_trip_time(1, Duration::from_millis(ms))
                        .map_err(|e| kconc_runtime::Error::Embedded(e.to_string()))
                })
                .map_err(|e| e.to_string())?;
            println!("rtt {ms}");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
        }
    }
    drop(cluster);
    Ok(())
}

fn produce(o: &Opts) -> Result<(), String> {
    let topic = o.str("topic")?;
    let partitions: i32 = o.num("partitions", None)?;
    let count: u64 = o.num("count", None)?;
    let keys: u64 = o.num("keys", Some(1000))?;
    let first: u64 = o.num("first-id", Some(0))?;
    let rate: f64 = o.num("rate", Some(0.0))?;
    if partitions < 1 || keys < 1 {
        return Err("--partitions and --keys must be at least 1".into());
    }
    let producer = TestProducer::with_properties(
        o.str("brokers")?,
        &[
            ("batch.num.messages", "1"),
            ("linger.ms", "0"),
            ("enable.idempotence", "true"),
        ],
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    for (i, id) in (first..first + count).enumerate() {
        let k = id % keys;
        let (key, payload) = (format!("k{k}"), id.to_string());
        let partition = (k % partitions as u64) as i32;
        producer
            .send(topic, Some(partition), Some(key.as_bytes()), payload.as_bytes())
            .map_err(|e| e.to_string())?;
        if rate > 0.0 {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let delivered = producer.flush(Duration::from_secs(120)).map_err(|e| e.to_string())?;
    let ends: Vec<String> = (0..partitions)
        .map(|p| delivered.get(&(topic.to_owned(), p)).copied().unwrap_or(0).to_string())
        .collect();
    println!("ends {}", ends.join(" "));
    eprintln!(
        "kconc-e2e: produced {count} messages in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A line for the journal and the handler waiting for it to be on disk.
type JournalEntry = (String, tokio::sync::oneshot::Sender<()>);

/// Appends lines to the journal, fsyncing once per batch of whatever is
/// waiting, then lets the handlers of that batch return. On an I/O error the
/// process exits: a handler must not count as done unless its line is durable.
fn journal_writer(path: String, rx: mpsc::Receiver<JournalEntry>) {
    let mut file = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kconc-e2e: cannot open the journal {path}: {e}");
            std::process::exit(3);
        }
    };
    let mut buf = String::new();
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some((line, ack)) = next {
            buf.push_str(&line);
            acks.push(ack);
            next = rx.try_recv().ok();
        }
        if let Err(e) = file.write_all(buf.as_bytes()).and_then(|()| file.sync_data()) {
            eprintln!("kconc-e2e: cannot write the journal {path}: {e}");
            std::process::exit(3);
        }
        buf.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn consume(o: &Opts) -> Result<(), String> {
    kconc_runtime::init_tracing_with(None).map_err(|e| e.to_string())?;
    let brokers = o.str("brokers")?.to_owned();
    let topic = o.str("topic")?.to_owned();
    let group = o.str("group")?.to_owned();
    let journal = o.str("journal")?.to_owned();
    let status = o.0.get("status").cloned();
    let concurrency: usize = o.num("concurrency", Some(100))?;
    let ordering = match o.0.get("ordering").map_or("unordered", String::as_str) {
        "unordered" => OrderingMode::Unordered,
        "key" => OrderingMode::Key,
        "partition" => OrderingMode::Partition,
        other => return Err(format!("--ordering: `{other}` is not unordered, key or partition")),
    };
    let delay = o.0.get("delay-ms").map_or("1-20", String::as_str);
    let (lo, hi) = delay
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| format!("--delay-ms: `{delay}` is not a range such as 1-20"))?;
    let batch: usize = o.num("commit-batch-size", Some(100))?;
    let metadata: kconc_runtime::CommitMetadata =
        o.0.get("commit-metadata")
            .map_or("finished", String::as_str)
            .parse()
            .map_err(|e| format!("--commit-metadata: {e}"))?;
    let instance = o.0.get("instance-id").cloned();
    let shutdown_ms: u64 = o.num("shutdown-timeout-ms", Some(20_000))?;
    // `--properties k=v,k=v`: librdkafka properties (debug=cgrp, ...).
    let properties: Vec<(String, String)> = match o.0.get("properties") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("--properties: `{kv}` is not KEY=VALUE"))
            })
            .collect::<Result<_, _>>()?,
    };

    // `--max-batch N`: a batch handler (one delay per call); `--fail-offset
    // O`: the message at offset O of every partition fails every attempt
    // (retried for as long as the process lives), so it never finishes.
    let max_batch: Option<usize> = o.0.get("max-batch").map(|_| o.num("max-batch", None)).transpose()?;
    let fail_offset: Option<i64> = o.0.get("fail-offset").map(|_| o.num("fail-offset", None)).transpose()?;

    let store = o.0.get("store").cloned();

    let (tx, rx) = mpsc::channel::<JournalEntry>();
    std::thread::spawn(move || journal_writer(journal, rx));
    let pid = std::process::id();
    let line_of = move |m: &Message, start: u128| -> Result<String, String> {
        let id = m.payload_str().map_err(|e| e.to_string())?;
        let key = m.key_str().unwrap_or("-");
        Ok(format!(
            "{id} {} {} {key} {start} {} {pid}\n",
            m.partition(),
            m.offset(),
            nanos_now()
        ))
    };
    let batch_tx = tx.clone();
    let journal_tx = tx.clone();
    let batch_handler = kconc_runtime::Handler::batch(move |msgs: Vec<Message>, _cx| {
        let tx = batch_tx.clone();
        async move {
            let start = nanos_now();
            let ms = if hi > lo { rand::random_range(lo..=hi) } else { lo };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut outcome = kconc_runtime::BatchOutcome::new();
            let mut acks = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                if Some(m.offset()) == fail_offset {
                    outcome.fail(i, "fails on purpose (--fail-offset)");
                    continue;
                }
                let (ack, done) = tokio::sync::oneshot::channel();
                tx.send((line_of(m, start)?, ack))
                    .map_err(|_| "the journal writer is gone".to_owned())?;
                acks.push(done);
            }
            for done in acks {
                done.await.map_err(|_| "the journal writer is gone".to_owned())?;
            }
            Ok::<_, String>(outcome)
        }
    });
    let single = Subscriber::new("e2e", [topic.clone()], group.clone(), move |m: Message| {
        let tx = tx.clone();
        async move {
            let start = nanos_now();
            let ms = if hi > lo { rand::random_range(lo..=hi) } else { lo };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let (ack, done) = tokio::sync::oneshot::channel();
            tx.send((line_of(&m, start)?, ack))
                .map_err(|_| "the journal writer is gone".to_owned())?;
            done.await.map_err(|_| "the journal writer is gone".to_owned())?;
            Ok::<(), String>(())
        }
    });
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let (sub, rows) = match &store {
        None => (single, None),
        Some(url) => {
            let db = runtime.block_on(Rows::open(url))?;
            let handler = db.handler(journal_tx, line_of, (lo, hi), max_batch.is_some(), fail_offset);
            let sub = Subscriber::from_handler("e2e", [topic.clone()], group.clone(), handler);
            (db.store(sub), Some(db))
        }
    };
    let sub = match (max_batch, rows.is_some()) {
        (Some(n), false) => Subscriber::from_handler("e2e", [topic], group, batch_handler).max_batch(n),
        (Some(n), true) => sub.max_batch(n),
        (None, _) => sub,
    };
    let sub = match fail_offset {
        Some(_) => sub
            .retries(u32::MAX)
            .backoff(Duration::from_millis(20))
            .max_backoff(Duration::from_millis(200)),
        None => sub,
    };
    let sub = sub
        .concurrency(concurrency)
        .ordering(ordering)
        .commit_metadata(metadata)
        .commit_batch_size(batch)
        .shutdown_timeout(Duration::from_millis(shutdown_ms));

    let protocol: GroupProtocol = match o.0.get("group-protocol") {
        Some(p) => p.parse().map_err(|e| format!("--group-protocol: {e}"))?,
        None => GroupProtocol::Classic,
    };
    let result = runtime.block_on(async move {
        let app = App::new().brokers(brokers).group_protocol(protocol);
        // A killed member is noticed after 6 s (Kafka's minimum) rather
        // than librdkafka's default 45 s (under the consumer protocol the
        // broker's setting says: see mock-broker's --group-timing).
        let app = match protocol {
            GroupProtocol::Classic => app
                .property("session.timeout.ms", "6000")
                .property("heartbeat.interval.ms", "1000"),
            GroupProtocol::Consumer => app,
        };
        let app = properties.iter().fold(app, |app, (k, v)| app.property(k, v));
        let app = match rows {
            Some(rows) => rows.state(app),
            None => app,
        };
        let sub = match instance {
            Some(id) => sub.instance_id(id),
            None => sub,
        };
        let running = app.subscriber(sub).start().map_err(|e| e.to_string())?;
        let stats = running.stats_handle("e2e");
        if let (Some(path), Some(stats)) = (status.clone(), stats.clone()) {
            tokio::spawn(async move {
                loop {
                    write_status(&path, &stats);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        let result = running.run_until_signal().await.map_err(|e| e.to_string());
        // Once more after the final commit, so the status says how it went.
        if let (Some(path), Some(stats)) = (status, stats) {
            write_status(&path, &stats);
        }
        result
    });
    // As the program `main!()` generates: a worker thread still busy must
    // not hold the exit up.
    runtime.shutdown_timeout(kconc_runtime::SHUTDOWN_MARGIN / 2);
    result
}

/// Rewrites the status file atomically: `assigned P P ...` and counters.
fn write_status(path: &str, stats: &kconc_runtime::StatsHandle) {
    let assigned: Vec<String> = stats.assigned_partitions().iter().map(|(_, p)| p.to_string()).collect();
    let s = stats.snapshot();
    let text = format!(
        "assigned {}\ndispatched {}\nhandled {}\ncommits {}\ncommit_failures {}\nassignments {}\nrevocations {}\n\
         revoke_commit_failures {}\nskipped_already_done {}\n",
        assigned.join(" "),
        s.dispatched,
        s.handled,
        s.commits,
        s.commit_failures,
        s.assignments,
        s.revocations,
        s.revoke_commit_failures,
        s.skipped_already_done
    );
    let tmp = format!("{path}.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// `--store`: the database the subscriber is exactly-once into.
#[derive(Clone)]
enum Rows {
    Sqlite(kconc_runtime::sql::sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(kconc_runtime::sql::sqlx::PgPool),
}

/// One row per message, as `e2e_rows` holds them (no key: a message
/// written twice shows as two rows).
const CREATE_ROWS: &str =
    "CREATE TABLE IF NOT EXISTS e2e_rows (id BIGINT NOT NULL, partition_id INTEGER NOT NULL, offset_id BIGINT NOT NULL, pid BIGINT NOT NULL)";

/// Inserts the row of each of `msgs` (but `skip`) through the open
/// transaction of `$db`. A database error is returned as it is (an
/// `sqlx::Error`), so kconc sees one that is transient (SQLite busy after
/// its lock wait, under a kill test's load) and runs the call again; made
/// a `String`, it went to the error policy and was skipped.
macro_rules! insert_rows {
    ($tx:expr, $msgs:expr, $skip:expr, $placeholders:literal) => {{
        let tx = &mut $tx;
        for m in $msgs.iter().filter(|m| Some(m.offset()) != $skip) {
            let id: i64 = m
                .payload_str()
                .map_err(|e| e.to_string())?
                .parse()
                .map_err(|_| "a payload that is not an id".to_owned())?;
            kconc_runtime::sql::sqlx::query(concat!(
                "INSERT INTO e2e_rows (id, partition_id, offset_id, pid) VALUES ",
                $placeholders
            ))
            .bind(id)
            .bind(m.partition())
            .bind(m.offset())
            .bind(i64::from(std::process::id()))
            .execute(&mut **tx)
            .await?;
        }
    }};
}

impl Rows {
    async fn open(url: &str) -> Result<Self, String> {
        let rows = match url.split_once(':') {
            Some(("sqlite", path)) => Rows::Sqlite(
                kconc_runtime::sql::sqlite_pool(path)
                    .await
                    .map_err(|e| format!("--store {url}: {e}"))?,
            ),
            #[cfg(feature = "postgres")]
            Some(("postgres", _)) => Rows::Postgres(
                kconc_runtime::sql::sqlx::postgres::PgPoolOptions::new()
                    .max_connections(20)
                    .connect(url)
                    .await
                    .map_err(|e| format!("--store: {e}"))?,
            ),
            _ => return Err(format!("--store: `{url}` is not sqlite:PATH or postgres://..")),
        };
        // Processes started together race to create the table (PostgreSQL
        // may refuse all but one `IF NOT EXISTS`): tried again.
        let mut tries = 0;
        loop {
            let created = match &rows {
                Rows::Sqlite(p) => kconc_runtime::sql::sqlx::query(CREATE_ROWS).execute(p).await.map(drop),
                #[cfg(feature = "postgres")]
                Rows::Postgres(p) => kconc_runtime::sql::sqlx::query(CREATE_ROWS).execute(p).await.map(drop),
            };
            match created {
                Ok(()) => return Ok(rows),
                Err(e) if tries >= 10 => return Err(format!("--store: {e}")),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn state(&self, app: App) -> App {
        match self {
            Rows::Sqlite(p) => app.state(p.clone()),
            #[cfg(feature = "postgres")]
            Rows::Postgres(p) => app.state(p.clone()),
        }
    }

    fn store(&self, sub: Subscriber) -> Subscriber {
        match self {
            Rows::Sqlite(_) => sub.exactly_once::<kconc_runtime::sql::Sqlite>(),
            #[cfg(feature = "postgres")]
            Rows::Postgres(_) => sub.exactly_once::<kconc_runtime::sql::Postgres>(),
        }
    }

    /// A batch handler (`batch`) or one of single messages: it sleeps a
    /// random delay, inserts each message's row through its transaction and
    /// journals it; the message at `fail` of each partition fails.
    fn handler(
        &self,
        journal: mpsc::Sender<JournalEntry>,
        line_of: impl Fn(&Message, u128) -> Result<String, String> + Copy + Send + Sync + 'static,
        (lo, hi): (u64, u64),
        batch: bool,
        fail: Option<i64>,
    ) -> kconc_runtime::Handler {
        let rows = self.clone();
        let run = move |msgs: Vec<Message>| {
            let (rows, journal) = (rows.clone(), journal.clone());
            let tx = rows.current();
            async move {
                let start = nanos_now();
                let ms = if hi > lo { rand::random_range(lo..=hi) } else { lo };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                match tx? {
                    Open::Sqlite(mut tx) => insert_rows!(tx, msgs, fail, "(?1, ?2, ?3, ?4)"),
                    #[cfg(feature = "postgres")]
                    Open::Postgres(mut tx) => insert_rows!(tx, msgs, fail, "($1, $2, $3, $4)"),
                }
                let mut outcome = kconc_runtime::BatchOutcome::new();
                let mut acks = Vec::new();
                for (i, m) in msgs.iter().enumerate() {
                    if Some(m.offset()) == fail {
                        outcome.fail(i, "fails on purpose (--fail-offset)");
                        continue;
                    }
                    let (ack, done) = tokio::sync::oneshot::channel();
                    journal
                        .send((line_of(m, start)?, ack))
                        .map_err(|_| "the journal writer is gone".to_owned())?;
                    acks.push(done);
                }
                for done in acks {
                    done.await.map_err(|_| "the journal writer is gone".to_owned())?;
                }
                Ok::<_, kconc_runtime::BoxError>(outcome)
            }
        };
        if batch {
            kconc_runtime::Handler::batch(move |msgs: Vec<Message>, _cx| run(msgs))
        } else {
            kconc_runtime::Handler::new(move |m: Message| {
                let fut = run(vec![m]);
                async move {
                    fut.await
                        .and_then(|o| if o.is_ok() { Ok(()) } else { Err("failed".into()) })
                }
            })
        }
    }

    fn current(&self) -> Result<Open, String> {
        Ok(match self {
            Rows::Sqlite(_) => Open::Sqlite(kconc_runtime::sql::Tx::current().map_err(|e| e.to_string())?),
            #[cfg(feature = "postgres")]
            Rows::Postgres(_) => Open::Postgres(kconc_runtime::sql::Tx::current().map_err(|e| e.to_string())?),
        })
    }
}

/// The transaction kconc opened for a call, of either database.
enum Open {
    Sqlite(kconc_runtime::sql::Tx<kconc_runtime::sql::Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(kconc_runtime::sql::Tx<kconc_runtime::sql::Postgres>),
}

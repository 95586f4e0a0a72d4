//! Exactly once into a database (`store = "sql"`), on the embedded cluster
//! and a real database: SQLite (a file) always, PostgreSQL too when
//! `TEST_POSTGRES_URL` names a server (`scripts/postgres` starts one; the
//! README's test command runs these tests against both).
//!
//! Every handler inserts a row per message through its `Tx`; the checks
//! count the rows: exactly one per produced message, none of a failed
//! attempt, none missing, after retries, restarts with Kafka's commits
//! lost, rebalances, and a database that refuses connections for a while.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{all_committed, committed, test_app, wait_for, StartInTestMode as _, DEADLINE};
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::sql::{sqlx, Sqlite, Tx};
use kconc_runtime::{BatchOutcome, Handler, Message, Subscriber};

/// The databases the tests run against.
#[derive(Clone, Debug)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Each database the suite runs against, fresh for test `name`: a SQLite
/// file; and a PostgreSQL database when `TEST_POSTGRES_URL` gives a
/// server's URL (required when the `postgres` feature is on: a suite built
/// for PostgreSQL never skips it).
async fn databases(name: &str) -> Vec<Db> {
    let dir = std::env::temp_dir().join(format!("kconc-eo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let sqlite = kconc_runtime::sql::sqlite_pool(&path).await.unwrap();
    #[allow(unused_mut)]
    let mut dbs = vec![Db::Sqlite(sqlite)];
    #[cfg(feature = "postgres")]
    dbs.push(Db::Postgres(postgres(name).await));
    for db in &dbs {
        db.execute(
            "CREATE TABLE rows (partition_id INTEGER NOT NULL, offset_id BIGINT NOT NULL, attempt INTEGER NOT NULL)",
        )
        .await;
    }
    dbs
}

/// A fresh PostgreSQL database `name` on the server `TEST_POSTGRES_URL`
/// names (a URL of its `postgres` database).
#[cfg(feature = "postgres")]
async fn postgres(name: &str) -> sqlx::PgPool {
    let url = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL: the URL of a PostgreSQL server (scripts/postgres starts one)");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&format!("{base}/{name}"))
        .await
        .unwrap()
}

impl Db {
    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "postgres",
        }
    }

    async fn execute(&self, sql: &str) {
        match self {
            Db::Sqlite(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
        }
    }

    /// How many rows each (partition, offset) has, and the attempts that
    /// wrote them.
    async fn rows(&self) -> BTreeMap<(i32, i64), Vec<i32>> {
        let sql = "SELECT partition_id, offset_id, attempt FROM rows";
        let rows: Vec<(i32, i64, i32)> = match self {
            Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        };
        let mut out: BTreeMap<(i32, i64), Vec<i32>> = BTreeMap::new();
        for (p, o, a) in rows {
            out.entry((p, o)).or_default().push(a);
        }
        out
    }

    /// kconc's finished runs of `topic`'s partitions, by partition.
    async fn finished(&self, topic: &str) -> BTreeMap<i32, Vec<(i64, i64)>> {
        let rows: Vec<(i32, i64, i64)> = match self {
            Db::Sqlite(p) => sqlx::query_as(
                "SELECT partition_id, start_offset, end_offset FROM kconc_offsets WHERE topic = ?1 \
                 ORDER BY partition_id, start_offset",
            )
            .bind(topic)
            .fetch_all(p)
            .await
            .unwrap(),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => sqlx::query_as(
                "SELECT partition_id, start_offset, end_offset FROM kconc_offsets WHERE topic = $1 \
                 ORDER BY partition_id, start_offset",
            )
            .bind(topic)
            .fetch_all(p)
            .await
            .unwrap(),
        };
        let mut out: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
        for (p, s, e) in rows {
            out.entry(p).or_default().push((s, e));
        }
        out
    }

    /// The app's state for it.
    fn state(&self, app: kconc_runtime::App) -> kconc_runtime::App {
        match self {
            Db::Sqlite(p) => app.state(p.clone()),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => app.state(p.clone()),
        }
    }
}

/// Inserts the row of `m` through `tx`.
async fn insert_row(
    db: &Db,
    tx: Result<TxOf, kconc_runtime::BoxError>,
    m: &Message,
) -> Result<(), kconc_runtime::BoxError> {
    match (db, tx?) {
        (Db::Sqlite(_), TxOf::Sqlite(mut tx)) => {
            sqlx::query("INSERT INTO rows (partition_id, offset_id, attempt) VALUES (?1, ?2, ?3)")
                .bind(m.partition())
                .bind(m.offset())
                .bind(m.attempt() as i32)
                .execute(&mut *tx)
                .await?;
        }
        #[cfg(feature = "postgres")]
        (Db::Postgres(_), TxOf::Postgres(mut tx)) => {
            sqlx::query("INSERT INTO rows (partition_id, offset_id, attempt) VALUES ($1, $2, $3)")
                .bind(m.partition())
                .bind(m.offset())
                .bind(m.attempt() as i32)
                .execute(&mut *tx)
                .await?;
        }
        #[allow(unreachable_patterns)]
        _ => return Err("the transaction is not of the test's database".into()),
    }
    Ok(())
}

/// The open transaction, of either database.
enum TxOf {
    Sqlite(Tx<Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(Tx<kconc_runtime::sql::Postgres>),
}

fn current_tx(db: &Db) -> Result<TxOf, kconc_runtime::BoxError> {
    Ok(match db {
        Db::Sqlite(_) => TxOf::Sqlite(Tx::current()?),
        #[cfg(feature = "postgres")]
        Db::Postgres(_) => TxOf::Postgres(Tx::current()?),
    })
}

/// A subscriber that inserts a row per message, after a short random
/// wait, and then fails where `fail(offset, attempt)` says (its row is
/// rolled back with it).
fn row_subscriber(db: &Db, topic: &str, group: &str, fail: fn(i64, u32) -> bool) -> Subscriber {
    let db2 = db.clone();
    let handler = Handler::new(move |m: Message| {
        let db = db2.clone();
        let tx = current_tx(&db);
        async move {
            insert_row(&db, tx, &m).await?;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..4))).await;
            if fail(m.offset(), m.attempt()) {
                return Err::<(), kconc_runtime::BoxError>("fails on purpose, after its insert".into());
            }
            Ok(())
        }
    });
    let sub = Subscriber::from_handler(topic, [topic], group, handler)
        .concurrency(20)
        .retries(3)
        .backoff(Duration::from_millis(10));
    with_store(db.clone(), sub)
}

fn with_store(db: Db, sub: Subscriber) -> Subscriber {
    match db {
        Db::Sqlite(_) => sub.exactly_once::<Sqlite>(),
        #[cfg(feature = "postgres")]
        Db::Postgres(_) => sub.exactly_once::<kconc_runtime::sql::Postgres>(),
    }
}

/// Every offset below each partition's end has exactly one row, written by
/// an attempt `ok` accepts.
async fn assert_exactly_once(db: &Db, ends: &[i64], ok: impl Fn(i64, i32) -> bool) {
    let rows = db.rows().await;
    let mut wrong = Vec::new();
    for (p, &end) in ends.iter().enumerate() {
        for o in 0..end {
            match rows.get(&(p as i32, o)).map(Vec::as_slice) {
                Some([a]) if ok(o, *a) => {}
                other => wrong.push(format!("{p}@{o}: {other:?}")),
            }
        }
    }
    let total: usize = rows.values().map(Vec::len).sum();
    let want: i64 = ends.iter().sum();
    assert!(
        wrong.is_empty() && total as i64 == want,
        "{}: {} offsets without exactly one good row (of {want}; {total} rows), e.g. {:?}",
        db.name(),
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// kconc's table lists every offset below each end as finished.
async fn assert_all_recorded(db: &Db, topic: &str, ends: &[i64]) {
    let finished = db.finished(topic).await;
    for (p, &end) in ends.iter().enumerate() {
        let runs = finished.get(&(p as i32)).cloned().unwrap_or_default();
        let mut covered = 0;
        for (s, e) in &runs {
            assert_eq!(*s, covered, "{}: partition {p}: runs {runs:?} leave a gap", db.name());
            covered = *e;
        }
        assert_eq!(covered, end, "{}: partition {p}: runs {runs:?}", db.name());
    }
}

/// Runs `sub` with `db`'s pool as state until the group has committed
/// its topic to `ends`, then shuts it down; returns its counters.
async fn run_to_the_ends(db: &Db, bootstrap: &str, sub: Subscriber, ends: &[i64]) -> kconc_runtime::StatsSnapshot {
    let (name, group, topic) = (sub.name().to_owned(), sub.group().to_owned(), sub.topics()[0].clone());
    let app = db
        .state(test_app(bootstrap))
        .subscriber(sub)
        .start_in_test_mode()
        .unwrap();
    wait_for("the group to commit to the ends", DEADLINE, || {
        committed(bootstrap, &group, &topic, ends.len() as i32) == all_committed(ends)
    })
    .await;
    let stats = app.stats(&name).unwrap();
    app.shutdown().await;
    stats
}

fn produce(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> Vec<i64> {
    common::produce(bootstrap, topic, partitions, n, 100)
}

/// One message in ten fails its first attempt after inserting its row: the
/// row is rolled back, the retry writes one; every message has exactly
/// one row, written by a successful attempt, and kconc's table lists every
/// offset; Kafka's commits reach the ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_writes_nothing_and_every_message_writes_one_row() {
    let (parts, n) = (4, 2_000);
    for db in databases("eo_retry").await {
        let topic = format!("eo-retry-{}", db.name());
        let group = format!("g-{topic}");
        let cluster = common::cluster(&topic, parts);
        let ends = produce(cluster.bootstrap_servers(), &topic, parts, n);
        let sub = row_subscriber(&db, &topic, &group, |o, a| o % 10 == 3 && a == 1);
        let stats = run_to_the_ends(&db, cluster.bootstrap_servers(), sub, &ends).await;
        assert_exactly_once(&db, &ends, |o, a| if o % 10 == 3 { a == 2 } else { a == 1 }).await;
        assert_all_recorded(&db, &topic, &ends).await;
        assert_eq!(stats.retried, ends.iter().map(|&e| (e + 6) / 10).sum::<i64>() as u64);
    }
}

/// The database decides what is done, not Kafka: the broker refuses every
/// commit of a first run, which stops a third of the way; a restart reads
/// from the start of each partition (nothing committed) and handles only
/// what has no row: every message has exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_kafkas_commits_lost_handles_nothing_twice() {
    let (parts, n) = (3, 1_500);
    for db in databases("eo_restart").await {
        let topic = format!("eo-restart-{}", db.name());
        let group = format!("g-{topic}");
        let cluster = common::cluster(&topic, parts);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let ends = produce(&bootstrap, &topic, parts, n);
        let mock = cluster.mock().unwrap();
        mock.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 2_000],
        );
        let app = db
            .state(test_app(&bootstrap))
            .subscriber(row_subscriber(&db, &topic, &group, |_, _| false))
            .start_in_test_mode()
            .unwrap();
        let deadline = std::time::Instant::now() + DEADLINE;
        while db.rows().await.len() < n / 3 {
            assert!(std::time::Instant::now() < deadline, "a third handled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = app.stats(&topic).unwrap();
        app.shutdown().await;
        mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
        let before = db.rows().await.len();
        assert!(before < n, "stopped before the end: {before}");
        assert_eq!(
            committed(&bootstrap, &group, &topic, parts),
            vec![None; parts as usize],
            "the first run committed nothing to Kafka ({} commit failures)",
            first.commit_failures
        );
        let sub = row_subscriber(&db, &topic, &group, |_, _| false);
        let stats = run_to_the_ends(&db, &bootstrap, sub, &ends).await;
        assert_exactly_once(&db, &ends, |_, a| a == 1).await;
        assert_all_recorded(&db, &topic, &ends).await;
        assert_eq!(
            stats.skipped_already_done as usize,
            before,
            "{}: the restart skipped exactly what the database listed",
            db.name()
        );
    }
}

/// A batch handler gets one transaction per call: a batch whose call
/// fails writes nothing; items it fails write nothing (their rows are not
/// inserted) and are retried alone; every message ends with one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_commits_its_rows_and_offsets_in_one_transaction() {
    let (parts, n) = (2, 1_000);
    for db in databases("eo_batch").await {
        let topic = format!("eo-batch-{}", db.name());
        let group = format!("g-{topic}");
        let cluster = common::cluster(&topic, parts);
        let ends = produce(cluster.bootstrap_servers(), &topic, parts, n);
        let failed_whole = Arc::new(AtomicBool::new(false));
        let (db2, whole) = (db.clone(), failed_whole.clone());
        let handler = Handler::batch(move |msgs: Vec<Message>, _cx| {
            let db = db2.clone();
            let whole = whole.clone();
            let tx = current_tx(&db);
            async move {
                let mut tx = Some(tx?);
                let mut outcome = BatchOutcome::new();
                for (i, m) in msgs.iter().enumerate() {
                    // Item 7 of a partition fails its first attempt: its
                    // row is not written.
                    if m.offset() % 100 == 7 && m.attempt() == 1 {
                        outcome.fail(i, "fails on purpose");
                        continue;
                    }
                    let t = match tx.take() {
                        Some(t) => t,
                        None => unreachable!(),
                    };
                    let t = insert_batch_row(&db, t, m).await?;
                    tx = Some(t);
                }
                // The first call fails whole, after its inserts.
                if !whole.swap(true, Ordering::SeqCst) {
                    return Err::<BatchOutcome, kconc_runtime::BoxError>("the whole batch fails".into());
                }
                Ok(outcome)
            }
        });
        let sub = Subscriber::from_handler(&topic, [topic.as_str()], &group, handler)
            .max_batch(50)
            .concurrency(4)
            .retries(3)
            .backoff(Duration::from_millis(10));
        run_to_the_ends(&db, cluster.bootstrap_servers(), with_store(db.clone(), sub), &ends).await;
        assert!(failed_whole.load(Ordering::SeqCst));
        assert_exactly_once(&db, &ends, |o, a| if o % 100 == 7 { a == 2 } else { a >= 1 }).await;
        assert_all_recorded(&db, &topic, &ends).await;
    }
}

/// Inserts `m`'s row through the batch's transaction and hands it back.
async fn insert_batch_row(db: &Db, tx: TxOf, m: &Message) -> Result<TxOf, kconc_runtime::BoxError> {
    match tx {
        TxOf::Sqlite(mut t) => {
            sqlx::query("INSERT INTO rows (partition_id, offset_id, attempt) VALUES (?1, ?2, ?3)")
                .bind(m.partition())
                .bind(m.offset())
                .bind(m.attempt() as i32)
                .execute(&mut *t)
                .await?;
            let _ = db;
            Ok(TxOf::Sqlite(t))
        }
        #[cfg(feature = "postgres")]
        TxOf::Postgres(mut t) => {
            sqlx::query("INSERT INTO rows (partition_id, offset_id, attempt) VALUES ($1, $2, $3)")
                .bind(m.partition())
                .bind(m.offset())
                .bind(m.attempt() as i32)
                .execute(&mut *t)
                .await?;
            Ok(TxOf::Postgres(t))
        }
    }
}

/// A database that cannot be used for 5 s while messages flow: SQLite
/// locked by another connection (the test pool gives up on a lock after
/// 100 ms), PostgreSQL refusing connections and dropping the open ones (a
/// proxy in front of it). The subscriber waits, health says why, nothing
/// is skipped or doubled, and it goes on once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_used_for_5_s_skips_nothing_and_doubles_nothing() {
    let (parts, n) = (3, 1_500);
    for db in databases("eo_outage").await {
        let topic = format!("eo-outage-{}", db.name());
        let group = format!("g-{topic}");
        let cluster = common::cluster(&topic, parts);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let ends = produce(&bootstrap, &topic, parts, n);
        let (handler_db, outage) = Outage::in_front_of(&db).await;
        let app = handler_db
            .state(test_app(&bootstrap))
            .subscriber(row_subscriber(&handler_db, &topic, &group, |_, _| false).retries(0))
            .start_in_test_mode()
            .unwrap();
        let deadline = std::time::Instant::now() + DEADLINE;
        while db.rows().await.len() < n / 5 {
            assert!(std::time::Instant::now() < deadline, "a fifth handled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        let guard = outage.begin().await;
        let mut said = None;
        while started.elapsed() < Duration::from_secs(5) {
            let problems = app.health().subscribers[0].problems.clone();
            if let Some(p) = problems.iter().find(|p| p.contains("waiting for its database")) {
                said = Some(p.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        outage.end(guard).await;
        let said = said.unwrap_or_else(|| panic!("{}: health never said it waited for the database", db.name()));
        wait_for("the group to commit to the ends", DEADLINE, || {
            committed(&bootstrap, &group, &topic, parts) == all_committed(&ends)
        })
        .await;
        let stats = app.stats(&topic).unwrap();
        let healthy_again = !app.health().subscribers[0]
            .problems
            .iter()
            .any(|p| p.contains("waiting for its database"));
        app.shutdown().await;
        assert!(healthy_again, "{}: health still says it waits", db.name());
        assert_eq!((stats.skipped, stats.dead_lettered), (0, 0), "{}: {said}", db.name());
        assert_exactly_once(&db, &ends, |_, a| a == 1).await;
        assert_all_recorded(&db, &topic, &ends).await;
    }
}

/// What makes a database unusable for a while.
enum Outage {
    /// Another connection holds SQLite's write lock.
    Sqlite(sqlx::SqlitePool),
    /// A proxy in front of PostgreSQL, refusing while set.
    #[cfg(feature = "postgres")]
    Postgres(Arc<proxy::Proxy>),
}

/// Held while the outage lasts.
#[allow(dead_code)]
enum OutageGuard {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    None,
}

impl Outage {
    /// The database as the handlers see it (through what the outage
    /// breaks), and the outage.
    async fn in_front_of(db: &Db) -> (Db, Outage) {
        match db {
            Db::Sqlite(pool) => {
                let options = (*pool.connect_options())
                    .clone()
                    .busy_timeout(Duration::from_millis(100));
                let handlers = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .unwrap();
                (Db::Sqlite(handlers), Outage::Sqlite(pool.clone()))
            }
            #[cfg(feature = "postgres")]
            Db::Postgres(pool) => {
                let opts = pool.connect_options();
                let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
                let proxy = proxy::Proxy::start(&upstream).await;
                let handlers = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(20)
                    .acquire_timeout(Duration::from_secs(1))
                    .connect_with((*opts).clone().port(proxy.port()))
                    .await
                    .unwrap();
                (Db::Postgres(handlers), Outage::Postgres(proxy))
            }
        }
    }

    async fn begin(&self) -> OutageGuard {
        match self {
            Outage::Sqlite(pool) => {
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE").execute(&mut *conn).await.unwrap();
                OutageGuard::Sqlite(conn)
            }
            #[cfg(feature = "postgres")]
            Outage::Postgres(proxy) => {
                proxy.refuse(true).await;
                OutageGuard::None
            }
        }
    }

    async fn end(&self, guard: OutageGuard) {
        if let OutageGuard::Sqlite(mut conn) = guard {
            sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        }
        #[cfg(feature = "postgres")]
        if let Outage::Postgres(proxy) = self {
            proxy.refuse(false).await;
        }
    }
}

/// A TCP proxy that can refuse connections and drop the open ones.
#[cfg(feature = "postgres")]
mod proxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Mutex;
    use tokio::task::JoinSet;

    pub(crate) struct Proxy {
        port: u16,
        refusing: Arc<AtomicBool>,
        open: Arc<Mutex<JoinSet<()>>>,
    }

    impl Proxy {
        pub(crate) async fn start(upstream: &str) -> Arc<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let proxy = Arc::new(Proxy {
                port,
                refusing: Arc::new(AtomicBool::new(false)),
                open: Arc::new(Mutex::new(JoinSet::new())),
            });
            let (refusing, open, upstream) = (proxy.refusing.clone(), proxy.open.clone(), upstream.to_owned());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    open.lock().await.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            });
            proxy
        }

        pub(crate) fn port(&self) -> u16 {
            self.port
        }

        /// Refuses new connections and drops the open ones (or lets them be).
        pub(crate) async fn refuse(&self, refuse: bool) {
            self.refusing.store(refuse, Ordering::SeqCst);
            if refuse {
                self.open.lock().await.abort_all();
            }
        }
    }
}

/// Rows written for another log (the topic deleted and created again
/// shorter: they list offsets at or past the partition's end now) are
/// forgotten on assignment, not trusted: every message of the new log is
/// handled, and the table then lists the new log's offsets only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_recreated_topic_are_forgotten_not_skipped() {
    let (parts, n) = (2, 200);
    for db in databases("eo_stale").await {
        let topic = format!("eo-stale-{}", db.name());
        let group = format!("g-{topic}");
        let cluster = common::cluster(&topic, parts);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        let ends = produce(&bootstrap, &topic, parts, n);
        // What the old, longer log left: 0..5000 of each partition finished
        // (the table as the README documents it).
        db.execute(
            "CREATE TABLE IF NOT EXISTS kconc_offsets (group_id TEXT NOT NULL, topic TEXT NOT NULL, \
             partition_id INTEGER NOT NULL, start_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL, \
             PRIMARY KEY (group_id, topic, partition_id, start_offset))",
        )
        .await;
        for p in 0..parts {
            db.execute(&format!(
                "INSERT INTO kconc_offsets (group_id, topic, partition_id, start_offset, end_offset) \
                 VALUES ('{group}', '{topic}', {p}, 0, 5000)"
            ))
            .await;
        }
        let sub = row_subscriber(&db, &topic, &group, |_, _| false);
        let stats = run_to_the_ends(&db, &bootstrap, sub, &ends).await;
        assert_exactly_once(&db, &ends, |_, a| a == 1).await;
        assert_all_recorded(&db, &topic, &ends).await;
        assert_eq!(stats.commit_metadata_stale, parts as u64, "{}", db.name());
    }
}

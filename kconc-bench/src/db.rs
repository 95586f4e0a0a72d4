//! `--db` (W-db): W-io with a database write per message. The handler
//! waits 10 ms (the I/O of W-io), then inserts the order's row, two ways:
//!
//! - **at-least-once + idempotency table** (what teams write by hand): a
//!   subscriber committing to Kafka only, whose handler opens its own
//!   transaction, inserts `(topic, partition, offset)` into `processed`
//!   with `ON CONFLICT DO NOTHING`, writes the row only if that inserted
//!   one, and commits;
//! - **kconc exactly-once** (`store = "sql"`): the handler writes the row
//!   through its `Tx`; kconc adds the offset and commits.
//!
//! Both write the same two rows per message in one transaction, from pools
//! of 110 connections (an exactly-once call holds one from before the
//! handler runs until its commit). For SQLite (a file in WAL mode,
//! `synchronous = FULL`, in `target/`) and, with the
//! `postgres` feature and `--postgres URL` (or `KCONC_BENCH_POSTGRES`), a
//! PostgreSQL server; at concurrency 10 and 100; each run on a topic and
//! in a group of its own, unordered. Per run it prints msg/s from the first
//! call to the last message handled, the W-io bound `concurrency / 10 ms`,
//! the ratio, and this process's CPU per message (SQLite's work included;
//! a PostgreSQL server's not). Figures only, nothing is asserted.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kconc_runtime::sql::{sqlx, Sqlite, Tx};
use kconc_runtime::{App, BoxError, Handler, Message, Subscriber};

use crate::{Order, Usage};

/// The I/O each message waits for before its write (W-io's).
const IO: Duration = Duration::from_millis(10);

/// Connections in each pool: above the highest concurrency.
const POOL: u32 = 110;

/// (concurrency, messages): each run takes about 3 s at the bound.
const RUNS: &[(usize, usize)] = &[(10, 3_000), (100, 20_000)];

/// The topics `--db` reads on the embedded cluster.
pub(crate) fn topics() -> impl Iterator<Item = String> {
    ["sqlite", "postgres"].into_iter().flat_map(|db| {
        RUNS.iter()
            .flat_map(move |(c, _)| ["alo", "eo"].map(move |mode| format!("bench-db-{db}-{mode}-{c}")))
    })
}

/// A database the workload writes to.
#[derive(Clone)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

const TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS orders_w (id BIGINT NOT NULL, amount BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS processed (topic TEXT NOT NULL, partition_id INTEGER NOT NULL, \
     offset_id BIGINT NOT NULL, PRIMARY KEY (topic, partition_id, offset_id))",
];

impl Db {
    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => "postgres",
        }
    }

    async fn setup(&self) -> Result<(), String> {
        for sql in TABLES {
            match self {
                Db::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
                #[cfg(feature = "postgres")]
                Db::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
            }
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn state(&self, app: App) -> App {
        match self {
            Db::Sqlite(p) => app.state(p.clone()),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => app.state(p.clone()),
        }
    }

    /// The at-least-once handler's work: its own transaction, the
    /// idempotency row first, the order's row only if that was new.
    async fn idempotent_write(&self, m: &Message, order: &Order) -> Result<(), BoxError> {
        macro_rules! write {
            ($pool:expr, $processed:literal, $row:literal) => {{
                let mut tx = $pool.begin().await?;
                let new = sqlx::query($processed)
                    .bind(m.topic())
                    .bind(m.partition())
                    .bind(m.offset())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if new == 1 {
                    sqlx::query($row)
                        .bind(order.id as i64)
                        .bind(order.price_cents as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Db::Sqlite(p) => write!(
                p,
                "INSERT INTO processed (topic, partition_id, offset_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                "INSERT INTO orders_w (id, amount) VALUES (?1, ?2)"
            ),
            #[cfg(feature = "postgres")]
            Db::Postgres(p) => write!(
                p,
                "INSERT INTO processed (topic, partition_id, offset_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                "INSERT INTO orders_w (id, amount) VALUES ($1, $2)"
            ),
        }
        Ok(())
    }

    /// The exactly-once handler: the order's row through kconc's `Tx`.
    fn exactly_once(&self, probe: &'static Probe) -> Handler {
        let db = self.clone();
        Handler::new(move |m: Message| {
            probe.begin();
            let open: Result<Open, BoxError> = match &db {
                Db::Sqlite(_) => Tx::<Sqlite>::current().map(Open::Sqlite),
                #[cfg(feature = "postgres")]
                Db::Postgres(_) => Tx::<kconc_runtime::sql::Postgres>::current().map(Open::Postgres),
            };
            async move {
                tokio::time::sleep(IO).await;
                let order = decode(&m)?;
                match open? {
                    Open::Sqlite(mut tx) => {
                        sqlx::query("INSERT INTO orders_w (id, amount) VALUES (?1, ?2)")
                            .bind(order.id as i64)
                            .bind(order.price_cents as i64)
                            .execute(&mut *tx)
                            .await?;
                    }
                    #[cfg(feature = "postgres")]
                    Open::Postgres(mut tx) => {
                        sqlx::query("INSERT INTO orders_w (id, amount) VALUES ($1, $2)")
                            .bind(order.id as i64)
                            .bind(order.price_cents as i64)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Ok::<(), BoxError>(())
            }
        })
    }

    fn store(&self, sub: Subscriber) -> Subscriber {
        match self {
            Db::Sqlite(_) => sub.exactly_once::<Sqlite>(),
            #[cfg(feature = "postgres")]
            Db::Postgres(_) => sub.exactly_once::<kconc_runtime::sql::Postgres>(),
        }
    }
}

enum Open {
    Sqlite(Tx<Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(Tx<kconc_runtime::sql::Postgres>),
}

fn decode(m: &Message) -> Result<Order, BoxError> {
    Ok(serde_json::from_slice(m.payload().unwrap_or_default())?)
}

/// When the first call began.
#[derive(Default)]
struct Probe {
    first: OnceLock<(Instant, Usage)>,
}

impl Probe {
    fn begin(&self) {
        self.first.get_or_init(|| (Instant::now(), Usage::now()));
    }
}

/// The databases: SQLite, and PostgreSQL at `postgres` if given.
async fn databases(postgres: Option<&str>) -> Result<Vec<Db>, String> {
    let path = std::path::Path::new("target").join("bench-db.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let _ = std::fs::create_dir_all("target");
    // Each exactly-once call holds a connection until its commit: the
    // pools have more than the highest concurrency, for both modes.
    let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(POOL)
        .connect_with(kconc_runtime::sql::sqlite_options(&path))
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[allow(unused_mut)]
    let mut dbs = vec![Db::Sqlite(sqlite)];
    match postgres {
        #[cfg(feature = "postgres")]
        Some(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(POOL)
                .connect(url)
                .await
                .map_err(|e| format!("--postgres: {e}"))?;
            for t in ["orders_w", "processed", "kconc_offsets"] {
                sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            dbs.push(Db::Postgres(pool));
        }
        #[cfg(not(feature = "postgres"))]
        Some(_) => return Err("--postgres needs kconc-bench's `postgres` feature".into()),
        None => {}
    }
    for db in &dbs {
        db.setup().await?;
    }
    Ok(dbs)
}

pub(crate) async fn run(bootstrap: &str, embedded: bool, postgres: Option<&str>) -> Result<(), String> {
    let stamp = crate::low_rate::stamp();
    let dbs = databases(postgres).await?;
    println!(
        "W-db: handler waits 10 ms, then writes one row per message; at-least-once with an idempotency table against store = \"sql\"; bound = concurrency / 10 ms; one run each{}",
        if postgres.is_none() { " (PostgreSQL: --postgres URL)" } else { "" }
    );
    for db in &dbs {
        for &(c, n) in RUNS {
            let mut rates = Vec::new();
            for mode in ["alo", "eo"] {
                let label = format!("{}-{mode}-{c}", db.name());
                let topic = if embedded {
                    format!("bench-db-{label}")
                } else {
                    let topic = format!("bench-db-{label}-{stamp}");
                    crate::low_rate::create_topic(bootstrap, &topic).await?;
                    topic
                };
                tokio::task::block_in_place(|| crate::produce(bootstrap, &topic, n, 1_000))?;
                let (rate, cpu) =
                    measure(bootstrap, db, &topic, &format!("bench-db-{label}-{stamp}"), n, c, mode).await?;
                let what = if mode == "alo" {
                    "at-least-once + idempotency table"
                } else {
                    "kconc exactly-once (store = sql)"
                };
                let bound = c as f64 / IO.as_secs_f64();
                println!(
                    "W-db         {n:>6} msgs  {:<8} c={c:<4} {what:<34} {rate:>8.0} msg/s  ratio {:.2} of bound {bound:.0}  cpu {:.2} us/msg",
                    db.name(),
                    rate / bound,
                    cpu.as_secs_f64() * 1e6,
                );
                rates.push((rate, cpu));
            }
            if let [(alo, alo_cpu), (eo, eo_cpu)] = rates[..] {
                println!(
                    "W-db         {:<8} c={c:<4} exactly-once / at-least-once: throughput {:.2}, cpu per message {:.2}",
                    db.name(),
                    eo / alo,
                    eo_cpu.as_secs_f64() / alo_cpu.as_secs_f64().max(1e-12)
                );
            }
        }
    }
    Ok(())
}

/// Reads the `n` messages of `topic` in `group` at concurrency `c`, in
/// `mode` (`alo` or `eo`), until every one is handled and committed;
/// returns msg/s and CPU per message.
async fn measure(
    bootstrap: &str,
    db: &Db,
    topic: &str,
    group: &str,
    n: usize,
    c: usize,
    mode: &str,
) -> Result<(f64, Duration), String> {
    // Leaked (a few bytes per run), as `framework`'s probe.
    let probe: &'static Probe = Box::leak(Box::default());
    let sub = if mode == "alo" {
        let db = db.clone();
        Subscriber::new("db", [topic], group, move |m: Message| {
            let db = db.clone();
            async move {
                probe.begin();
                tokio::time::sleep(IO).await;
                let order = decode(&m)?;
                db.idempotent_write(&m, &order).await
            }
        })
    } else {
        db.store(Subscriber::from_handler("db", [topic], group, db.exactly_once(probe)))
    }
    .concurrency(c);
    let app = crate::props("KCONC_BENCH_PROPS")
        .into_iter()
        .fold(App::new().brokers(bootstrap), |app, (k, v)| app.property(k, v))
        .subscriber(sub);
    let running = db.state(app).start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = running.stats("db").ok_or("no such subscriber")?;
        if s.failed + s.panicked > 0 {
            return Err(format!("W-db: {} handler calls failed", s.failed + s.panicked));
        }
        if s.handled >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("W-db: only {} of {n} messages handled", s.handled));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (took, usage) = probe.first.get().map_or((Duration::ZERO, Usage::default()), |(t, u)| {
        (t.elapsed(), Usage::now().since(*u))
    });
    crate::wait_committed(bootstrap, topic, group, deadline, "W-db").await?;
    running.shutdown().await;
    Ok((n as f64 / took.as_secs_f64(), usage.cpu / n as u32))
}

//! Exactly once into a database (`store = "sql"`): a handler's writes and
//! its message's offset, committed in one SQL transaction.
//!
//! The handler takes a [`Tx`] (an open transaction from the app's `sqlx`
//! pool, a state) and writes through it. When it returns `Ok`, kconc adds
//! the message's offset to its table [`TABLE`] in the same transaction and
//! commits it; when it fails, panics or runs out of time, the transaction
//! is rolled back and the error policy applies as always (a skip or a dead
//! letter is then recorded in a transaction of its own). On assignment the
//! engine reads the partition's finished offsets from the table and skips
//! them: the database, not Kafka's commit, says which messages are done.
//!
//! The table (created if missing):
//!
//! ```sql
//! CREATE TABLE kconc_offsets (
//!     group_id     TEXT    NOT NULL,
//!     topic        TEXT    NOT NULL,
//!     partition_id INTEGER NOT NULL,
//!     start_offset BIGINT  NOT NULL,  -- finished: start_offset ..
//!     end_offset   BIGINT  NOT NULL,  -- .. end_offset - 1
//!     PRIMARY KEY (group_id, topic, partition_id, start_offset)
//! )
//! ```
//!
//! A message's transaction adds the row `(offset, offset + 1)`; a batch's
//! adds one row per run of consecutive finished offsets. The primary key
//! is a fence: a second transaction of the same message (a handler that
//! outlived its partition's revoke, or a retry after a commit whose answer
//! was lost) fails on it and is rolled back, writes and all, and the
//! message counts as finished. A compaction task merges adjacent rows, in
//! transactions of their own, so the table holds about one row per gap.
//! Transient failures (the database unreachable, a lost connection, a
//! serialization failure or deadlock, SQLite busy) are never the error
//! policy's: the subscriber waits for the database (health says so), and
//! a commit whose outcome is unknown is looked up before the message runs
//! again.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sqlx;
#[cfg(feature = "postgres")]
pub use sqlx::Postgres;
pub use sqlx::Sqlite;

use sqlx::Pool;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchEnd, BatchFuture};
use crate::context::Context;
use crate::handler::{BatchFn, BoxError, FutureSlot, HandlerFn};
use crate::message::{Message, PayloadError};
use crate::state::States;
use crate::stats::Stats;

/// The table kconc keeps finished offsets in.
pub const TABLE: &str = "kconc_offsets";

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs of finished offsets, `[start, end)`, in order.
pub(crate) type Ranges = Vec<(i64, i64)>;

/// The longest wait between two tries of an unreachable database.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How often the compaction task merges adjacent rows.
const COMPACT_EVERY: Duration = Duration::from_secs(2);

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Sqlite {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
}

/// A database kconc can keep offsets in: [`Sqlite`], and `Postgres`
/// (cargo feature `postgres`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database kconc can keep offsets in",
    label = "`Tx<{Self}>` is not supported",
    note = "use `Tx<Sqlite>`, or `Tx<Postgres>` with kconc-runtime's `postgres` feature (both from `kconc_runtime::sql`)"
)]
pub trait Database: sqlx::Database + sealed::Sealed {
    #[doc(hidden)]
    fn statements() -> &'static Statements;

    #[doc(hidden)]
    fn insert<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self>,
        at: &'a Place,
        ranges: &'a [(i64, i64)],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    #[doc(hidden)]
    fn ranges<'a>(pool: &'a Pool<Self>, at: &'a Place) -> BoxFuture<'a, Result<Ranges, sqlx::Error>>;

    #[doc(hidden)]
    fn execute<'a>(pool: &'a Pool<Self>, sql: &'a str, at: &'a Place) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    #[doc(hidden)]
    fn crowded<'a>(pool: &'a Pool<Self>, group: &'a str) -> BoxFuture<'a, Result<Vec<(String, i32)>, sqlx::Error>>;

    #[doc(hidden)]
    fn compact<'a>(pool: &'a Pool<Self>, at: &'a Place) -> BoxFuture<'a, Result<usize, sqlx::Error>>;

    #[doc(hidden)]
    fn create(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), sqlx::Error>>;
}

/// A partition of a group's topic: where offsets are kept.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Place {
    group: Arc<str>,
    topic: Arc<str>,
    partition: i32,
}

/// The statements that differ only in their placeholders.
#[doc(hidden)]
#[derive(Debug)]
pub struct Statements {
    insert: &'static str,
    select: &'static str,
    forget: &'static str,
    crowded: &'static str,
    delete_run: &'static str,
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS kconc_offsets (\
     group_id TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL, \
     start_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL, \
     PRIMARY KEY (group_id, topic, partition_id, start_offset))";

/// The same code for each database: `sqlx`'s generic bounds, written once
/// per concrete type.
macro_rules! database {
    ($db:ty, $statements:expr) => {
        impl Database for $db {
            fn statements() -> &'static Statements {
                static S: Statements = $statements;
                &S
            }

            fn insert<'a>(
                tx: &'a mut sqlx::Transaction<'static, Self>,
                at: &'a Place,
                ranges: &'a [(i64, i64)],
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    for &(start, end) in ranges {
                        sqlx::query(Self::statements().insert)
                            .bind(&*at.group)
                            .bind(&*at.topic)
                            .bind(at.partition)
                            .bind(start)
                            .bind(end)
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(())
                })
            }

            fn ranges<'a>(pool: &'a Pool<Self>, at: &'a Place) -> BoxFuture<'a, Result<Ranges, sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query_as::<_, (i64, i64)>(Self::statements().select)
                        .bind(&*at.group)
                        .bind(&*at.topic)
                        .bind(at.partition)
                        .fetch_all(pool)
                        .await
                })
            }

            fn execute<'a>(
                pool: &'a Pool<Self>,
                sql: &'a str,
                at: &'a Place,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(sql)
                        .bind(&*at.group)
                        .bind(&*at.topic)
                        .bind(at.partition)
                        .execute(pool)
                        .await
                        .map(drop)
                })
            }

            fn crowded<'a>(
                pool: &'a Pool<Self>,
                group: &'a str,
            ) -> BoxFuture<'a, Result<Vec<(String, i32)>, sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query_as::<_, (String, i32)>(Self::statements().crowded)
                        .bind(group)
                        .fetch_all(pool)
                        .await
                })
            }

            fn compact<'a>(pool: &'a Pool<Self>, at: &'a Place) -> BoxFuture<'a, Result<usize, sqlx::Error>> {
                Box::pin(async move {
                    let mut tx = pool.begin().await?;
                    let rows = sqlx::query_as::<_, (i64, i64)>(Self::statements().select)
                        .bind(&*at.group)
                        .bind(&*at.topic)
                        .bind(at.partition)
                        .fetch_all(&mut *tx)
                        .await?;
                    let mut merged = 0;
                    for (start, end, count) in adjacent_runs(&rows) {
                        if count < 2 {
                            continue;
                        }
                        let deleted = sqlx::query(Self::statements().delete_run)
                            .bind(&*at.group)
                            .bind(&*at.topic)
                            .bind(at.partition)
                            .bind(start)
                            .bind(end)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        // Another compaction changed these rows since they
                        // were read (PostgreSQL's read committed lets both
                        // go on): nothing of this one is kept.
                        if deleted != count as u64 {
                            tx.rollback().await?;
                            return Ok(0);
                        }
                        Self::insert(&mut tx, at, &[(start, end)]).await?;
                        merged += count - 1;
                    }
                    tx.commit().await?;
                    Ok(merged)
                })
            }

            fn create(pool: &Pool<Self>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
                Box::pin(async move { sqlx::query(CREATE).execute(pool).await.map(drop) })
            }
        }
    };
}

database!(
    sqlx::Sqlite,
    Statements {
        insert: "INSERT INTO kconc_offsets (group_id, topic, partition_id, start_offset, end_offset) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
        select: "SELECT start_offset, end_offset FROM kconc_offsets \
                 WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3 ORDER BY start_offset",
        forget: "DELETE FROM kconc_offsets WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3",
        crowded: "SELECT topic, partition_id FROM kconc_offsets WHERE group_id = ?1 \
                  GROUP BY topic, partition_id HAVING COUNT(*) > 1",
        delete_run: "DELETE FROM kconc_offsets WHERE group_id = ?1 AND topic = ?2 AND partition_id = ?3 \
                     AND start_offset >= ?4 AND start_offset < ?5 AND end_offset <= ?5",
    }
);

#[cfg(feature = "postgres")]
database!(
    sqlx::Postgres,
    Statements {
        insert: "INSERT INTO kconc_offsets (group_id, topic, partition_id, start_offset, end_offset) \
                 VALUES ($1, $2, $3, $4, $5)",
        select: "SELECT start_offset, end_offset FROM kconc_offsets \
                 WHERE group_id = $1 AND topic = $2 AND partition_id = $3 ORDER BY start_offset",
        forget: "DELETE FROM kconc_offsets WHERE group_id = $1 AND topic = $2 AND partition_id = $3",
        crowded: "SELECT topic, partition_id FROM kconc_offsets WHERE group_id = $1 \
                  GROUP BY topic, partition_id HAVING COUNT(*) > 1",
        delete_run: "DELETE FROM kconc_offsets WHERE group_id = $1 AND topic = $2 AND partition_id = $3 \
                     AND start_offset >= $4 AND start_offset < $5 AND end_offset <= $5",
    }
);

/// The runs of rows that touch (`end` of one is `start` of the next), as
/// (start, end, rows).
fn adjacent_runs(rows: &[(i64, i64)]) -> Vec<(i64, i64, usize)> {
    let mut runs: Vec<(i64, i64, usize)> = Vec::new();
    for &(start, end) in rows {
        match runs.last_mut() {
            Some(last) if last.1 == start => {
                last.1 = end;
                last.2 += 1;
            }
            _ => runs.push((start, end, 1)),
        }
    }
    runs
}

/// The runs of consecutive offsets in `offsets` (sorted), as `[start, end)`.
pub(crate) fn runs(offsets: impl IntoIterator<Item = i64>) -> Ranges {
    let mut out: Ranges = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some(last) if last.1 == o => last.1 = o + 1,
            _ => out.push((o, o + 1)),
        }
    }
    out
}

/// Whether `e` may pass if tried again: the database unreachable or gone
/// away, the pool exhausted, a serialization failure or deadlock, SQLite
/// busy or locked. (Never the handler's fault, so never the error
/// policy's.)
pub(crate) fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let code = code.as_ref();
            // PostgreSQL: connection exceptions (08), serialization
            // failure, deadlock, admin shutdown, cannot connect now;
            // SQLite: busy, locked (and their extended codes).
            code.starts_with("08")
                || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
                || matches!(code.parse::<u32>().map(|c| c & 0xff), Ok(5 | 6))
        }),
        _ => false,
    }
}

/// Whether the handler's error (or one of its sources) is a transient
/// database error.
fn transient_in(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<sqlx::Error>().is_some_and(transient) {
            return true;
        }
        cur = err.source();
    }
    false
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// The open transaction of one handler call (of a message, or of a batch):
/// write through it with `&mut *tx` as the executor.
///
/// ```no_run
/// use kconc_runtime::sql::{Sqlite, Tx};
/// use kconc_runtime::{subscriber, Json};
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     id: i64,
/// }
///
/// #[subscriber(topic = "orders", group = "ledger", store = "sql")]
/// async fn record(mut tx: Tx<Sqlite>, Json(order): Json<Order>) -> Result<(), sqlx::Error> {
///     sqlx::query("INSERT INTO orders (id) VALUES (?1)")
///         .bind(order.id)
///         .execute(&mut *tx)
///         .await?;
///     Ok(())
/// }
/// ```
///
/// kconc commits it when the handler returns `Ok` (with the message's
/// offset); it must not outlive the handler (a `Tx` still held elsewhere
/// when the handler returns fails the call, and is rolled back when
/// dropped).
pub struct Tx<DB: Database> {
    tx: Option<sqlx::Transaction<'static, DB>>,
    back: Option<tokio::sync::oneshot::Sender<sqlx::Transaction<'static, DB>>>,
}

impl<DB: Database> std::fmt::Debug for Tx<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<DB: Database> std::ops::Deref for Tx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match &self.tx {
            Some(tx) => tx,
            // Taken only by `drop`.
            None => unreachable!("a Tx's transaction is taken only when it is dropped"),
        }
    }
}

impl<DB: Database> std::ops::DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match &mut self.tx {
            Some(tx) => tx,
            None => unreachable!("a Tx's transaction is taken only when it is dropped"),
        }
    }
}

impl<DB: Database> Drop for Tx<DB> {
    /// Hands the transaction back to kconc, which commits it if the
    /// handler succeeded (else it is rolled back when dropped).
    fn drop(&mut self) {
        if let (Some(tx), Some(back)) = (self.tx.take(), self.back.take()) {
            let _ = back.send(tx);
        }
    }
}

tokio::task_local! {
    /// The transaction kconc opened for the call being built (what the `Tx`
    /// argument takes).
    static OPEN: RefCell<Option<Box<dyn Any + Send>>>;
}

impl<DB: Database> Tx<DB> {
    /// The transaction kconc opened for the call being made, for handlers
    /// built in code ([`Handler::new`](crate::Handler::new) and
    /// [`Subscriber::exactly_once`](crate::Subscriber::exactly_once)): call
    /// it in the closure, before its `async` block (it is there only while
    /// the handler is being called). `#[subscriber]` handlers take a `Tx`
    /// argument instead.
    pub fn current() -> Result<Self, BoxError> {
        Self::take_open().map_err(Into::into)
    }

    /// The transaction opened for the handler being called, once.
    fn take_open() -> Result<Self, String> {
        let open = OPEN
            .try_with(|open| open.borrow_mut().take())
            .map_err(|_| "no transaction is open: a `Tx` argument needs `store = \"sql\"`".to_owned())?;
        match open.map(|b| b.downcast::<Tx<DB>>()) {
            Some(Ok(tx)) => Ok(*tx),
            Some(Err(_)) => Err(format!(
                "the transaction open is not of `{}`: the handler's `Tx` names another database than its pool",
                std::any::type_name::<DB>()
            )),
            None => Err("a handler takes one `Tx`".to_owned()),
        }
    }
}

impl<DB: Database> crate::extract::FromMessage for Tx<DB> {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, PayloadError> {
        Self::take_open().map_err(|why| msg.payload_error(why))
    }
}

impl<DB: Database> crate::batch::FromBatchContext for Tx<DB> {
    fn from_batch_context(_: &Context) -> Result<Self, BoxError> {
        Self::take_open().map_err(Into::into)
    }
}

/// How `#[subscriber]` learns the database of a `Tx` argument: a function
/// that opens the subscriber's store from the app's state.
#[doc(hidden)]
pub trait TxArg {
    fn spec() -> StoreSpec;
}

impl<DB: Database> TxArg for Tx<DB> {
    fn spec() -> StoreSpec {
        StoreSpec {
            open: open::<DB>,
            requires: crate::state::StateRequirement::of::<Pool<DB>>(),
        }
    }
}

/// Opens a subscriber's store: from the app's state (the pool), for its
/// group.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct StoreSpec {
    pub(crate) open: OpenFn,
    /// The pool it takes from the app's state.
    pub(crate) requires: crate::state::StateRequirement,
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSpec")
    }
}

/// Opens a store: `open::<DB>`.
pub(crate) type OpenFn = fn(&States, Opening) -> Result<Arc<dyn Store>, String>;

/// What a store is opened with.
pub(crate) struct Opening {
    pub(crate) group: Arc<str>,
    pub(crate) subscriber: Arc<str>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) runtime: tokio::runtime::Handle,
    /// The subscriber's `concurrency` (a pool smaller than it caps it).
    pub(crate) concurrency: usize,
}

/// A subscriber's offsets in its database, as the engine and the workers
/// use them.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    /// The handler of one message, each call in a transaction.
    fn wrap_one(self: Arc<Self>, f: Arc<HandlerFn>) -> Arc<HandlerFn>;
    /// The handler of a batch, each call in one transaction.
    fn wrap_batch(self: Arc<Self>, f: Arc<BatchFn>) -> Arc<BatchFn>;
    /// The finished runs of `topic`'s partition `partition`.
    fn finished<'a>(&'a self, topic: &'a str, partition: i32) -> BoxFuture<'a, Result<Ranges, sqlx::Error>>;
    /// Forgets every finished offset of `topic`'s partition `partition`
    /// (its offsets were reused).
    fn forget<'a>(&'a self, topic: &'a str, partition: i32) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// Records `offset` finished without the handler's writes (skipped or
    /// dead-lettered), in a transaction of its own, waiting for the
    /// database while it is unreachable.
    fn record<'a>(&'a self, topic: &'a str, partition: i32, offset: i64) -> BoxFuture<'a, ()>;
    /// Says (for health) that the database could not be used, or no more.
    fn unavailable(&self, why: Option<String>);
}

fn open<DB: Database>(states: &States, o: Opening) -> Result<Arc<dyn Store>, String> {
    let pool = states.get::<Pool<DB>>().ok_or_else(|| {
        format!(
            "no state of type `{}`: a handler taking `Tx<{db}>` needs the app's `sqlx` pool as a state \
             (App::state, main!(state = ..))",
            std::any::type_name::<Pool<DB>>(),
            db = std::any::type_name::<DB>().rsplit("::").next().unwrap_or("DB"),
        )
    })?;
    let size = pool.options().get_max_connections() as usize;
    if size < o.concurrency {
        tracing::warn!(
            subscriber = &*o.subscriber,
            pool = size,
            concurrency = o.concurrency,
            "the database pool has fewer connections than `concurrency`: each call holds one until its \
             commit, so at most `pool` calls run at once; give the pool at least `concurrency` connections"
        );
    }
    let store = Arc::new(SqlStore::<DB> {
        pool,
        group: o.group,
        subscriber: o.subscriber,
        stats: o.stats,
        schema: tokio::sync::OnceCell::new(),
        waiting: Mutex::new(None),
    });
    let compacting = store.clone();
    let shutdown = o.shutdown;
    o.runtime.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(COMPACT_EVERY) => {}
            }
            compacting.compact().await;
        }
    });
    Ok(store)
}

impl<DB: Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &std::any::type_name::<DB>())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    group: Arc<str>,
    subscriber: Arc<str>,
    stats: Arc<Stats>,
    /// Set once the table is known to exist.
    schema: tokio::sync::OnceCell<()>,
    /// Why the database could not be used, while it cannot.
    waiting: Mutex<Option<String>>,
}

impl<DB: Database> SqlStore<DB> {
    fn place(&self, topic: &str, partition: i32) -> Place {
        Place {
            group: self.group.clone(),
            topic: Arc::from(topic),
            partition,
        }
    }

    async fn schema(&self) -> Result<(), sqlx::Error> {
        self.schema.get_or_try_init(|| DB::create(&self.pool)).await.map(drop)
    }

    /// A transaction, once the database gives one: until then the
    /// subscriber waits (and health says why).
    async fn begin(&self) -> sqlx::Transaction<'static, DB> {
        let mut wait = Duration::from_millis(20);
        loop {
            let begun = match self.schema().await {
                Ok(()) => self.pool.begin().await,
                Err(e) => Err(e),
            };
            match begun {
                Ok(tx) => {
                    self.unavailable(None);
                    return tx;
                }
                Err(e) => {
                    self.unavailable(Some(e.to_string()));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
    }

    /// Whether `offset` is recorded finished, once the database answers.
    async fn recorded(&self, at: &Place, offset: i64) -> bool {
        let mut wait = Duration::from_millis(20);
        loop {
            match DB::ranges(&self.pool, at).await {
                Ok(ranges) => {
                    self.unavailable(None);
                    return ranges.iter().any(|&(s, e)| s <= offset && offset < e);
                }
                Err(e) => {
                    self.unavailable(Some(e.to_string()));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
    }

    /// Adds `ranges` to the transaction and commits it. `Ok(true)`: it
    /// committed, or another transaction had recorded them (this one is
    /// rolled back); `Ok(false)`: it did not commit (run the call again).
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, DB>,
        at: &Place,
        ranges: &[(i64, i64)],
    ) -> Result<bool, sqlx::Error> {
        // The transaction goes (commits, or rolls back) before anything
        // waits: a failed one must not hold a pool connection meanwhile.
        let done = match DB::insert(&mut tx, at, ranges).await {
            Ok(()) => tx.commit().await,
            Err(e) => {
                drop(tx);
                Err(e)
            }
        };
        match done {
            Ok(()) => Ok(true),
            Err(e) if unique_violation(&e) => {
                tracing::warn!(
                    subscriber = &*self.subscriber,
                    topic = &*at.topic,
                    partition = at.partition,
                    offset = ranges.first().map_or(-1, |r| r.0),
                    "already recorded finished by another transaction (an earlier attempt whose answer was lost, or \
                     the partition's previous owner): this one is rolled back"
                );
                Ok(true)
            }
            // The commit may or may not have happened: the table says.
            Err(e) if transient(&e) => {
                self.unavailable(Some(e.to_string()));
                Ok(match ranges.first() {
                    Some(&(first, _)) => self.recorded(at, first).await,
                    None => true,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn compact(&self) {
        let crowded = match DB::crowded(&self.pool, &self.group).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(subscriber = &*self.subscriber, error = %e, "offset table compaction: cannot list");
                return;
            }
        };
        for (topic, partition) in crowded {
            let at = self.place(&topic, partition);
            match DB::compact(&self.pool, &at).await {
                Ok(merged) => tracing::trace!(
                    subscriber = &*self.subscriber,
                    topic,
                    partition,
                    merged,
                    "offset rows merged"
                ),
                Err(e) => {
                    tracing::debug!(subscriber = &*self.subscriber, topic, partition, error = %e, "offset table compaction failed; tried again later")
                }
            }
        }
    }
}

/// The pause before a call runs again after a transient database error:
/// none the first time, then from 20 ms doubling up to [`MAX_WAIT`] (a
/// database refusing every transaction, say with serialization failures,
/// is not hammered).
#[derive(Default)]
struct Rerun(Option<Duration>);

impl Rerun {
    async fn wait(&mut self) {
        if let Some(wait) = self.0 {
            tokio::time::sleep(wait).await;
        }
        self.0 = Some(self.0.map_or(Duration::from_millis(20), |w| (w * 2).min(MAX_WAIT)));
    }
}

/// The `Tx` for one call, and where it comes back when dropped.
fn open_tx<DB: Database>(
    tx: sqlx::Transaction<'static, DB>,
) -> (Tx<DB>, tokio::sync::oneshot::Receiver<sqlx::Transaction<'static, DB>>) {
    let (back, returned) = tokio::sync::oneshot::channel();
    (
        Tx {
            tx: Some(tx),
            back: Some(back),
        },
        returned,
    )
}

/// What a call that returned `Ok` left of its transaction.
fn returned<DB: Database>(
    mut returned: tokio::sync::oneshot::Receiver<sqlx::Transaction<'static, DB>>,
) -> Result<sqlx::Transaction<'static, DB>, BoxError> {
    returned.try_recv().map_err(|_| {
        "the handler returned while its `Tx` was still held (moved into a task or a value that outlives it): \
         nothing of it is committed"
            .into()
    })
}

async fn run_one<DB: Database>(
    store: Arc<SqlStore<DB>>,
    f: Arc<HandlerFn>,
    msg: Message,
    cx: Context,
) -> Result<(), BoxError> {
    let at = store.place(msg.topic(), msg.partition());
    let offset = msg.offset();
    let mut rerun = Rerun::default();
    let mut call = FutureSlot::default();
    loop {
        rerun.wait().await;
        let (tx, back) = open_tx(store.begin().await);
        OPEN.sync_scope(RefCell::new(Some(Box::new(tx))), || f(msg.clone(), &cx, &mut call));
        match (&mut call).await {
            Ok(()) => {
                if store.commit(returned(back)?, &at, &[(offset, offset + 1)]).await? {
                    return Ok(());
                }
            }
            // Rolled back (dropped); an outage runs the call again.
            Err(e) if transient_in(&*e) => {
                store.unavailable(Some(e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn run_batch<DB: Database>(
    store: Arc<SqlStore<DB>>,
    f: Arc<BatchFn>,
    msgs: Vec<Message>,
    cx: Context,
) -> BatchEnd {
    let Some(first) = msgs.first() else {
        return BatchEnd::default();
    };
    let at = store.place(first.topic(), first.partition());
    let offsets: Vec<i64> = msgs.iter().map(Message::offset).collect();
    let mut rerun = Rerun::default();
    loop {
        rerun.wait().await;
        let (tx, back) = open_tx(store.begin().await);
        let call = OPEN.sync_scope(RefCell::new(Some(Box::new(tx))), || f(msgs.clone(), &cx));
        let end = call.await;
        let mut failed = vec![false; offsets.len()];
        for &(i, _) in &end.failed {
            if let Some(f) = failed.get_mut(i) {
                *f = true;
            }
        }
        if failed.iter().all(|&f| f) {
            // Rolled back (dropped); an outage runs the call again.
            if end.failed.iter().any(|(_, e)| transient_in(&**e)) {
                continue;
            }
            return end;
        }
        let done = runs(offsets.iter().zip(&failed).filter(|(_, &f)| !f).map(|(&o, _)| o));
        let tx = match returned(back) {
            Ok(tx) => tx,
            Err(e) => return crate::batch::each_fails(e, 0..offsets.len()),
        };
        match store.commit(tx, &at, &done).await {
            Ok(true) => return end,
            Ok(false) => {}
            Err(e) => return crate::batch::each_fails(e.into(), 0..offsets.len()),
        }
    }
}

impl<DB: Database> Store for SqlStore<DB> {
    fn wrap_one(self: Arc<Self>, f: Arc<HandlerFn>) -> Arc<HandlerFn> {
        Arc::new(move |msg: Message, cx: &Context, slot: &mut FutureSlot| {
            // A transaction may last: it holds a copy, not librdkafka's record.
            slot.set(run_one(self.clone(), f.clone(), msg.detached(), cx.clone()));
        })
    }

    fn wrap_batch(self: Arc<Self>, f: Arc<BatchFn>) -> Arc<BatchFn> {
        Arc::new(move |msgs: Vec<Message>, cx: &Context| -> BatchFuture {
            Box::pin(run_batch(self.clone(), f.clone(), msgs, cx.clone()))
        })
    }

    fn finished<'a>(&'a self, topic: &'a str, partition: i32) -> BoxFuture<'a, Result<Ranges, sqlx::Error>> {
        Box::pin(async move {
            self.schema().await?;
            DB::ranges(&self.pool, &self.place(topic, partition)).await
        })
    }

    fn forget<'a>(&'a self, topic: &'a str, partition: i32) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            self.schema().await?;
            DB::execute(&self.pool, DB::statements().forget, &self.place(topic, partition)).await
        })
    }

    fn record<'a>(&'a self, topic: &'a str, partition: i32, offset: i64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let at = self.place(topic, partition);
            loop {
                let tx = self.begin().await;
                match self.commit(tx, &at, &[(offset, offset + 1)]).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        // Not transient, and not the fence: tried again
                        // (the message stays unfinished meanwhile).
                        self.unavailable(Some(e.to_string()));
                        tokio::time::sleep(MAX_WAIT).await;
                    }
                }
            }
        })
    }

    fn unavailable(&self, why: Option<String>) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        if waiting.is_some() == why.is_some() {
            return;
        }
        match &why {
            Some(why) => tracing::warn!(
                subscriber = &*self.subscriber,
                error = why.as_str(),
                "the database cannot be used; waiting for it (nothing is skipped or committed meanwhile)"
            ),
            None => tracing::info!(subscriber = &*self.subscriber, "the database answers again"),
        }
        self.stats.set_store_waiting(why.clone());
        *waiting = why;
    }
}

/// The connection options kconc's exactly-once handlers want of SQLite:
/// the database file at `path` (created if missing), in WAL mode (readers do
/// not block the writer), `synchronous = FULL` (a committed transaction
/// survives a power loss: kconc commits the offset to Kafka once it is
/// recorded, so a lost one would be skipped), waiting up to 5 s for a lock
/// rather than failing at once. For a pool of your own size:
/// `SqlitePoolOptions::new().max_connections(n).connect_with(sqlite_options(path))`.
pub fn sqlite_options(path: impl AsRef<std::path::Path>) -> sqlx::sqlite::SqliteConnectOptions {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
}

/// A pool of [`sqlite_options`] with 32 connections. Each handler call
/// holds one from before the handler runs until its commit, so at most 32
/// calls run at once whatever `concurrency` says (kconc warns at start-up
/// when a pool is smaller than `concurrency`).
pub async fn sqlite_pool(path: impl AsRef<std::path::Path>) -> Result<sqlx::SqlitePool, sqlx::Error> {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(32)
        .connect_with(sqlite_options(path))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_offsets() {
        assert_eq!(runs([3, 4, 5, 7, 9, 10]), vec![(3, 6), (7, 8), (9, 11)]);
        assert_eq!(runs([]), Vec::<(i64, i64)>::new());
    }

    #[test]
    fn adjacent_rows_merge_and_count() {
        let rows = [(0, 5), (5, 6), (6, 9), (10, 11), (12, 13), (13, 14)];
        assert_eq!(adjacent_runs(&rows), vec![(0, 9, 3), (10, 11, 1), (12, 14, 2)]);
    }
}

//! Exactly once into a database: payments added to account balances in
//! SQLite, each payment's update and its offset committed in one
//! transaction (`store = "sql"`), with its own tests.
//!
//! ```text
//! cargo run --example ledger                               # embedded broker; a fresh target/ledger.db; Ctrl-C to stop
//! cargo run --example ledger -- --brokers localhost:9092   # a real cluster; the ledger in $LEDGER_DB (default target/ledger.db)
//! cargo test --example ledger                              # its tests
//! ```
//!
//! Adding to a balance is not idempotent: a payment applied twice leaves
//! the balance wrong, and at-least-once delivery (a crash between the
//! write and the offset commit, a rebalance) applies some twice. Here the
//! handler writes through the `Tx` kconc hands it; kconc records the
//! payment's offset in its table `kconc_offsets` in the same transaction
//! and commits both, and on every assignment skips what that table lists.
//! A payment whose update committed is never applied again; one whose
//! update did not commit is never skipped. A payment the ledger refuses
//! (amount 0) is dead-lettered, and that is recorded too.

use kconc_runtime::sql::{sqlx, Sqlite, Tx};
use kconc_runtime::{subscriber, BoxError, Json, NonRetryable, Setup};
use serde::{Deserialize, Serialize};

/// A payment as it arrives on `payments`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Payment {
    pub id: u64,
    pub account: String,
    pub amount: i64,
}

/// Adds the payment to its account's balance, in the transaction kconc
/// opened for it. An error rolls the update back (retried up to 3 times,
/// then dead-lettered); a database that cannot be reached is waited for,
/// not retried.
#[subscriber(
    topic = "payments",
    group = "ledger",
    store = "sql",
    concurrency = 8,
    retries = 3,
    backoff = "10ms",
    dead_letter = "payments.dlq",
    name = "ledger"
)]
async fn apply(mut tx: Tx<Sqlite>, Json(payment): Json<Payment>) -> Result<(), BoxError> {
    if payment.amount == 0 {
        return Err(NonRetryable::new(format!("payment {}: an amount of 0 is refused", payment.id)).into());
    }
    sqlx::query(
        "INSERT INTO balances (account, balance, payments) VALUES (?1, ?2, 1) \
         ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance, payments = payments + 1",
    )
    .bind(&payment.account)
    .bind(payment.amount)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The ledger's own table.
pub async fn create_tables(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance BIGINT NOT NULL, payments BIGINT NOT NULL)",
    )
    .execute(pool)
    .await
    .map(drop)
}

/// The start-up hook: the pool (a state, which `Tx<Sqlite>` takes its
/// transactions from). On the embedded broker the ledger starts empty: the
/// broker's topics are new on every run, and the offsets an old ledger
/// lists would name other payments.
async fn open_ledger(setup: Setup) -> Result<sqlx::SqlitePool, BoxError> {
    let path = std::env::var("LEDGER_DB").unwrap_or_else(|_| "target/ledger.db".to_owned());
    if setup.is_embedded() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    if let Some(dir) = std::path::Path::new(&path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    let pool = kconc_runtime::sql::sqlite_pool(&path).await?;
    create_tables(&pool).await?;
    tracing::info!(path, "ledger open");
    Ok(pool)
}

/// On the embedded broker: 5,000 demo payments over 20 accounts, one in a
/// hundred refused.
async fn demo_payments(setup: Setup) -> Result<(), kconc_runtime::Error> {
    if !setup.is_embedded() {
        return Ok(());
    }
    let producer = kconc_runtime::testing::TestProducer::new(setup.bootstrap_servers())?;
    for p in demo(5_000) {
        let payload = serde_json::to_vec(&p).unwrap_or_default();
        producer.send("payments", None, Some(p.account.as_bytes()), &payload)?;
    }
    producer.flush(std::time::Duration::from_secs(30))?;
    tracing::info!(
        "produced 5,000 demo payments; Ctrl-C to stop (balances: sqlite3 target/ledger.db 'select * from balances')"
    );
    Ok(())
}

/// `n` payments over 20 accounts; every hundredth (from 7) has amount 0.
pub fn demo(n: u64) -> impl Iterator<Item = Payment> {
    (0..n).map(|id| Payment {
        id,
        account: format!("acct-{}", id % 20),
        amount: if id % 100 == 7 { 0 } else { (id % 50) as i64 + 1 },
    })
}

kconc_runtime::main!(
    state = open_ledger,
    on_start = demo_payments,
    default_brokers = "embedded"
);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kconc_runtime::testing::{TestApp, TestMessage};

    use super::*;

    async fn ledger(name: &str) -> sqlx::SqlitePool {
        let dir = std::env::temp_dir().join(format!("kconc-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join(format!("{name}.db"));
        let _ = std::fs::remove_file(&path);
        let pool = kconc_runtime::sql::sqlite_pool(&path).await.expect("the ledger");
        create_tables(&pool).await.expect("its table");
        pool
    }

    /// Every payment is added exactly once: each balance is the sum of its
    /// account's payments, and each account counts its payments; the
    /// refused ones are dead-lettered; kconc's table lists every offset.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_payment_is_added_once_and_refused_ones_dead_lettered() -> Result<(), BoxError> {
        let pool = ledger("once").await;
        let run = TestApp::new().only(["ledger"]).state(pool.clone()).start().await?;
        let payments: Vec<Payment> = demo(2_000).collect();
        let messages: Vec<TestMessage> = payments
            .iter()
            .map(|p| TestMessage::json(p).key(p.account.clone()))
            .collect();
        run.send_many("payments", messages).await?;
        let stats = run.wait_handled("ledger", 2_000).await?;
        run.wait_idle("ledger").await?;
        let dead = run.read("payments.dlq", 20).await?;
        run.stop().await;
        let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for p in payments.iter().filter(|p| p.amount != 0) {
            let e = want.entry(p.account.clone()).or_default();
            *e = (e.0 + p.amount, e.1 + 1);
        }
        let got: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT account, balance, payments FROM balances ORDER BY account")
                .fetch_all(&pool)
                .await?;
        let got: BTreeMap<String, (i64, i64)> = got.into_iter().map(|(a, b, n)| (a, (b, n))).collect();
        assert_eq!(got, want);
        assert_eq!((stats.handled, stats.dead_lettered), (1_980, 20));
        assert_eq!(dead.len(), 20);
        let (recorded,): (i64,) =
            sqlx::query_as("SELECT COALESCE(SUM(end_offset - start_offset), 0) FROM kconc_offsets")
                .fetch_one(&pool)
                .await?;
        assert_eq!(
            recorded, 2_000,
            "kconc's table lists every offset, dead letters included"
        );
        Ok(())
    }
}

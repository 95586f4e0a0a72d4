//! A batch handler: orders archived into a table with one bulk insert per
//! batch, a row the table refuses failing alone (dead-lettered), and its own
//! tests written with `kconc_runtime::testing`.
//!
//! ```text
//! cargo run --example bulk                               # embedded broker; Ctrl-C to stop
//! cargo run --example bulk -- --brokers localhost:9092   # a real cluster
//! cargo test --example bulk                              # its tests
//! ```
//!
//! The table is a stand-in for a database connection pool: `insert_many`
//! writes every row it accepts in one call and names the rows it refuses
//! (here: a negative amount, like a CHECK constraint). The handler maps
//! those to the batch's indices; kconc finishes every other message of the
//! batch (a crash or a rebalance never hands them to a handler again) and
//! sends only the refused ones on to the error policy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kconc_runtime::{subscriber, Batch, BatchOutcome, Json, NonRetryable, Setup, State};
use serde::{Deserialize, Serialize};

/// An order as it arrives on `orders`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Order {
    pub id: u64,
    pub amount: i64,
}

/// The archive table: clones share it.
#[derive(Clone, Debug, Default)]
pub struct Table {
    rows: Arc<Mutex<BTreeMap<u64, i64>>>,
    inserts: Arc<Mutex<Vec<usize>>>,
}

impl Table {
    /// Inserts `orders` in one statement (an upsert by id, so a batch
    /// handled again writes nothing twice); returns the positions it
    /// refused, each with its reason.
    pub async fn insert_many(&self, orders: &[&Order]) -> Result<Vec<(usize, String)>, String> {
        let mut refused = Vec::new();
        let mut rows = self.rows.lock().map_err(|_| "the table is poisoned".to_owned())?;
        for (i, order) in orders.iter().enumerate() {
            if order.amount < 0 {
                refused.push((
                    i,
                    format!(
                        "order {}: amount {} violates CHECK (amount >= 0)",
                        order.id, order.amount
                    ),
                ));
            } else {
                rows.insert(order.id, order.amount);
            }
        }
        drop(rows);
        if let Ok(mut inserts) = self.inserts.lock() {
            inserts.push(orders.len());
        }
        Ok(refused)
    }

    pub fn rows(&self) -> BTreeMap<u64, i64> {
        self.rows.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// How many rows each insert statement carried.
    pub fn inserts(&self) -> Vec<usize> {
        self.inserts.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

/// Archives each batch of orders (up to 500, of one partition) with one
/// insert. A row the table refuses is not retried (`NonRetryable`) and
/// goes to `orders.dlq`; a failed insert (an `Err`) retries the whole
/// batch.
#[subscriber(
    topic = "orders",
    group = "archive",
    concurrency = 4,
    max_batch = 500,
    retries = 2,
    backoff = "10ms",
    dead_letter = "orders.dlq",
    name = "archive"
)]
async fn archive(State(table): State<Table>, orders: Batch<Json<Order>>) -> Result<BatchOutcome, String> {
    let rows: Vec<&Order> = orders.iter().map(|Json(order)| order).collect();
    let mut outcome = BatchOutcome::new();
    for (i, reason) in table.insert_many(&rows).await? {
        outcome.fail(i, NonRetryable::new(reason));
    }
    Ok(outcome)
}

/// The start-up hook: opens the table (a real service connects its pool).
async fn open_table(_: Setup) -> Result<Table, std::io::Error> {
    Ok(Table::default())
}

/// On the embedded broker: a few thousand demo orders, one in a hundred
/// refused by the table.
async fn demo_orders(setup: Setup) -> Result<(), kconc_runtime::Error> {
    if !setup.is_embedded() {
        return Ok(());
    }
    let producer = kconc_runtime::testing::TestProducer::new(setup.bootstrap_servers())?;
    for id in 0..5_000_u64 {
        let amount = if id % 100 == 7 { -1 } else { (id % 90) as i64 + 1 };
        let payload = serde_json::to_vec(&Order { id, amount }).unwrap_or_default();
        producer.send(
            "orders",
            None,
            Some(format!("customer-{}", id % 50).as_bytes()),
            &payload,
        )?;
    }
    producer.flush(std::time::Duration::from_secs(30))?;
    tracing::info!("produced 5,000 demo orders; Ctrl-C to stop");
    Ok(())
}

kconc_runtime::main!(state = open_table, on_start = demo_orders, default_brokers = "embedded");

#[cfg(test)]
mod tests {
    use kconc_runtime::testing::{batch, context, message, TestApp, TestMessage};

    use super::*;

    /// The handler called directly: the refused row is item 1.
    #[tokio::test]
    async fn a_refused_row_fails_alone() {
        let table = Table::default();
        let cx = context("archive").state(table.clone()).build();
        let msgs = [(1, 5), (2, -3), (3, 4)]
            .iter()
            .enumerate()
            .map(|(o, (id, amount))| {
                message("orders", 0, o as i64).with_payload(
                    serde_json::to_vec(&Order {
                        id: *id,
                        amount: *amount,
                    })
                    .unwrap_or_default(),
                )
            })
            .collect();
        let orders = batch::<Json<Order>>(msgs, &cx).expect("valid orders");
        let outcome = archive(State(table.clone()), orders)
            .await
            .expect("the insert went through");
        assert_eq!(outcome.failed().collect::<Vec<_>>(), [1]);
        assert_eq!(table.rows(), BTreeMap::from([(1, 5), (3, 4)]));
    }

    /// The service on an embedded cluster: every good order archived in
    /// bulk, the refused ones and an unreadable one dead-lettered, all
    /// committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orders_are_archived_in_bulk_and_refused_rows_dead_lettered() -> Result<(), kconc_runtime::Error> {
        let table = Table::default();
        let run = TestApp::new().only(["archive"]).state(table.clone()).start().await?;
        let mut messages: Vec<TestMessage> = (0..2_000_u64)
            .map(|id| {
                let amount = if id % 100 == 7 { -1 } else { 10 };
                TestMessage::json(&Order { id, amount }).key(format!("customer-{}", id % 10))
            })
            .collect();
        messages.push(TestMessage::new("not an order").key("customer-0"));
        run.send_many("orders", messages).await?;
        let stats = run.wait_handled("archive", 2_001).await?;
        run.wait_idle("archive").await?;
        assert_eq!(table.rows().len(), 1_980);
        assert_eq!((stats.handled, stats.dead_lettered), (1_980, 21));
        let inserts = table.inserts();
        assert!(
            inserts.len() < 2_001,
            "{} inserts for 2,001 orders: nothing was batched",
            inserts.len()
        );
        let dead = run.read("orders.dlq", 21).await?;
        assert_eq!(dead.len(), 21);
        run.stop().await;
        Ok(())
    }
}

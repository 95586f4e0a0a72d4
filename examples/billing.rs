//! An example service: application state built at start-up and closed at
//! shutdown, a reply topic, a dead-letter topic, and its own tests written
//! with `kconc_runtime::testing` (run by `cargo test --all-targets`).
//!
//! ```text
//! cargo run --example billing                               # embedded broker; Ctrl-C to stop
//! cargo run --example billing -- --brokers localhost:9092   # a real cluster
//! cargo test --example billing                              # its tests
//! ```
//!
//! Each order on `orders` is charged to the ledger (the state: a stand-in
//! for a connection pool) and answered on `orders.billed`; an order the
//! ledger refuses (a negative amount) is dead-lettered to `orders.dlq` at
//! once, without retries.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use kconc_runtime::{subscriber, Json, NonRetryable, Setup, State};
use serde::{Deserialize, Serialize};

/// An order as it arrives on `orders`.
// `JsonSchema`: the AsyncAPI document (`--asyncapi`) has its schema.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, kconc_runtime::schemars::JsonSchema)]
#[schemars(crate = "kconc_runtime::schemars")]
pub struct Order {
    /// The order's id, unique per customer.
    pub id: u64,
    /// What to charge, in cents.
    pub amount: i64,
}

/// What `bill` publishes on `orders.billed`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, kconc_runtime::schemars::JsonSchema)]
#[schemars(crate = "kconc_runtime::schemars")]
pub struct Billed {
    pub order: u64,
    pub amount: i64,
    /// The ledger's balance after this charge.
    pub balance: i64,
}

/// The ledger: cloned into every handler (clones share one pool), opened
/// before consuming starts and closed after the last commit.
#[derive(Clone, Debug, Default)]
pub struct Ledger(Arc<LedgerInner>);

#[derive(Debug, Default)]
pub struct LedgerInner {
    balance: AtomicI64,
    charges: AtomicU64,
    closed: AtomicBool,
}

impl Ledger {
    /// Charges `amount`; refuses a negative one.
    pub async fn charge(&self, order: &Order) -> Result<i64, String> {
        if self.0.closed.load(Ordering::SeqCst) {
            return Err("the ledger is closed".into());
        }
        if order.amount < 0 {
            return Err(format!("order {} has a negative amount {}", order.id, order.amount));
        }
        self.0.charges.fetch_add(1, Ordering::SeqCst);
        Ok(self.0.balance.fetch_add(order.amount, Ordering::SeqCst) + order.amount)
    }

    pub fn charges(&self) -> u64 {
        self.0.charges.load(Ordering::SeqCst)
    }

    pub fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }
}

/// Charges each order and answers with the new balance; a customer's orders
/// (same key) are charged one at a time, in order. A refused order is
/// not retried (`NonRetryable`): it goes to `orders.dlq` with the reason in
/// its `kconc-error` header.
#[subscriber(
    topic = "orders",
    group = "billing",
    concurrency = 20,
    ordering = "key",
    retries = 2,
    backoff = "10ms",
    dead_letter = "orders.dlq",
    reply = "orders.billed",
    name = "billing"
)]
async fn bill(State(ledger): State<Ledger>, Json(order): Json<Order>) -> Result<Json<Billed>, NonRetryable> {
    let balance = ledger.charge(&order).await.map_err(NonRetryable::new)?;
    Ok(Json(Billed {
        order: order.id,
        amount: order.amount,
        balance,
    }))
}

/// The start-up hook: opens the ledger named by `LEDGER_URL` (default
/// `memory://`), as a real service connects its pool from its
/// configuration; if it cannot, the program exits non-zero before joining
/// its group.
async fn open_ledger(setup: Setup) -> Result<Ledger, std::io::Error> {
    let url = std::env::var("LEDGER_URL").unwrap_or_else(|_| "memory://".to_owned());
    if !url.starts_with("memory://") {
        return Err(std::io::Error::other(format!(
            "cannot open the ledger at `{url}`: this example has only `memory://` ledgers"
        )));
    }
    tracing::info!(brokers = setup.bootstrap_servers(), %url, "ledger open");
    Ok(Ledger::default())
}

/// The shutdown hook: runs after the drain and the final commit. A
/// failure here (a flush that did not go through) makes the exit code
/// non-zero.
async fn close_ledger(setup: Setup) -> Result<(), std::io::Error> {
    if let Some(ledger) = setup.state::<Ledger>() {
        ledger.close();
        tracing::info!(charges = ledger.charges(), "ledger closed");
    }
    Ok(())
}

kconc_runtime::main!(
    state = open_ledger,
    on_stop = close_ledger,
    default_brokers = "embedded"
);

#[cfg(test)]
mod tests {
    use kconc_runtime::testing::{arg, context, message, TestApp};

    use super::*;

    /// The service as `main!()` runs it: the start-up and shutdown hooks
    /// included, on a fresh embedded cluster.
    fn service() -> TestApp {
        TestApp::new()
            .only(["billing"])
            .app(|app| app.state_from(open_ledger).on_stop(close_ledger))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_is_charged_and_answered_and_its_offset_committed() -> Result<(), kconc_runtime::Error> {
        let run = service().start().await?;
        run.send_json("orders", "cust-1", &Order { id: 1, amount: 5 }).await?;
        run.send_json("orders", "cust-1", &Order { id: 2, amount: 7 }).await?;
        run.wait_handled("billing", 2).await?;
        let billed = run.read("orders.billed", 2).await?;
        let replies: Vec<Billed> = billed
            .iter()
            .map(|m| serde_json::from_slice(m.payload().unwrap_or_default()).expect("a Billed"))
            .collect();
        assert_eq!(
            replies,
            vec![
                Billed {
                    order: 1,
                    amount: 5,
                    balance: 5
                },
                Billed {
                    order: 2,
                    amount: 7,
                    balance: 12
                }
            ]
        );
        assert_eq!(billed[0].key(), Some(&b"cust-1"[..]), "a reply is keyed like its order");
        let source = billed[0].header_str("kconc-source-offset");
        assert_eq!(source, Some("0"), "a reply says which message it answers");
        run.wait_idle("billing").await?;
        run.stop().await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_order_is_dead_lettered_at_once_with_its_reason() -> Result<(), kconc_runtime::Error> {
        let run = service().start().await?;
        run.send_json("orders", "cust-2", &Order { id: 3, amount: -4 }).await?;
        let stats = run.wait_handled("billing", 1).await?;
        assert_eq!((stats.dead_lettered, stats.retried), (1, 0), "not retried: {stats:?}");
        let dead = run.read("orders.dlq", 1).await?;
        let reason = dead[0].header_str("kconc-error");
        assert_eq!(reason, Some("order 3 has a negative amount -4"));
        run.wait_idle("billing").await?;
        run.stop().await;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ledger_is_closed_after_the_last_commit() -> Result<(), kconc_runtime::Error> {
        let ledger = Ledger::default();
        // The test's own ledger instead of the start-up hook's, to look at it.
        let run = TestApp::new()
            .only(["billing"])
            .state(ledger.clone())
            .app(|app| app.on_stop(close_ledger))
            .start()
            .await?;
        run.send_json("orders", "cust-3", &Order { id: 4, amount: 1 }).await?;
        run.wait_handled("billing", 1).await?;
        assert!(!ledger.is_closed());
        run.stop().await;
        assert!(ledger.is_closed(), "the shutdown hook ran");
        assert_eq!(ledger.charges(), 1);
        Ok(())
    }

    /// The handler called directly, no cluster: its arguments built from a
    /// message as the runtime builds them.
    #[tokio::test]
    async fn the_handler_called_directly() {
        let ledger = Ledger::default();
        let cx = context("billing").state(ledger.clone()).build();
        let msg = message("orders", 0, 42).with_payload(r#"{"id":9,"amount":3}"#);
        let billed = bill(arg(&msg, &cx).expect("state"), arg(&msg, &cx).expect("an order"))
            .await
            .expect("charged");
        assert_eq!(billed.0.balance, 3);
        let refused = message("orders", 0, 43).with_payload(r#"{"id":9,"amount":-3}"#);
        let err = bill(
            arg(&refused, &cx).expect("state"),
            arg(&refused, &cx).expect("an order"),
        )
        .await
        .expect_err("refused");
        assert_eq!(err.to_string(), "order 9 has a negative amount -3");
    }
}

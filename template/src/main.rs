//! A payments service: charges each payment once, in order per account, and
//! answers on `payments.done`; a payment that can never succeed goes to
//! `payments.dlq` with its reason.
//!
//! ```sh
//! cargo run -- --brokers embedded --embedded-address-file broker.addr
//! cargo run -- --brokers "$(cat broker.addr)" produce payments 'acct-1={"account":"acct-1","id":1,"cents":500}'
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kconc_runtime::{subscriber, Json, NonRetryable, Setup, State};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Payment {
    pub account: String,
    pub id: u64,
    pub cents: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub id: u64,
    pub balance: i64,
}

/// Balances per account: a database pool in a real service.
#[derive(Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<String, i64>>>);

impl Ledger {
    fn charge(&self, payment: &Payment) -> i64 {
        let mut balances = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let balance = balances.entry(payment.account.clone()).or_default();
        *balance += payment.cents;
        *balance
    }
}

/// Payments are keyed by account: `ordering = "key"` charges one account's
/// payments one at a time, in order, and different accounts at once.
#[subscriber(
    topic = "payments",
    group = "payments",
    name = "payments",
    ordering = "key",
    concurrency = 20,
    retries = 3,
    backoff = "50ms",
    dead_letter = "payments.dlq",
    reply = "payments.done"
)]
async fn pay(State(ledger): State<Ledger>, Json(payment): Json<Payment>) -> Result<Json<Done>, NonRetryable> {
    if payment.cents <= 0 {
        // Retrying cannot fix it: straight to the dead-letter topic.
        return Err(NonRetryable::new(format!(
            "payment {} has a non-positive amount {}",
            payment.id, payment.cents
        )));
    }
    let balance = ledger.charge(&payment);
    tracing::info!(account = %payment.account, id = payment.id, balance, "charged");
    Ok(Json(Done {
        id: payment.id,
        balance,
    }))
}

/// Builds the ledger at start-up, before any message is read (connect to
/// your database here; an error stops the program with it).
async fn open_ledger(_setup: Setup) -> Result<Ledger, std::io::Error> {
    Ok(Ledger::default())
}

kconc_runtime::main!(state = open_ledger);

#[cfg(test)]
mod tests;

// `store = "sql"` needs the transaction the handler writes through.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "ledger", store = "sql")]
async fn record(_msg: Message) {}

fn main() {}

// A `Tx` argument needs `store = "sql"`.
use kconc_runtime::sql::{Sqlite, Tx};
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "ledger")]
async fn record(_tx: Tx<Sqlite>, _msg: Message) {}

fn main() {}

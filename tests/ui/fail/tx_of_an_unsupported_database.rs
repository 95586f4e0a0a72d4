// `Tx` takes a database kconc keeps offsets in (SQLite, or PostgreSQL with
// the `postgres` feature).
use kconc_runtime::sql::Tx;
use kconc_runtime::{subscriber, Message};

struct Redis;

#[subscriber(topic = "orders", group = "ledger", store = "sql")]
async fn record(_tx: Tx<Redis>, _msg: Message) {}

fn main() {}

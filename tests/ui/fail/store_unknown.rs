// `store` is `"kafka"` or `"sql"`.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "ledger", store = "redis")]
async fn record(_msg: Message) {}

fn main() {}

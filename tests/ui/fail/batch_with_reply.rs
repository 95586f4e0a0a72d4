// `reply` is not supported on batch handlers (yet).
use kconc_runtime::{subscriber, Batch, Message};

#[subscriber(topic = "orders", group = "archive", reply = "orders.archived")]
async fn archive(_orders: Batch<Message>) {}

fn main() {}

// `max_batch_bytes` is a whole number of bytes, not a string.
use kconc_runtime::{subscriber, Batch, Message};

#[subscriber(topic = "orders", group = "archive", max_batch_bytes = "1MB")]
async fn archive(_orders: Batch<Message>) {}

fn main() {}

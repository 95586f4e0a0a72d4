// A batch holds at least one message.
use kconc_runtime::{subscriber, Batch, Message};

#[subscriber(topic = "orders", group = "archive", max_batch = 0)]
async fn archive(_orders: Batch<Message>) {}

fn main() {}

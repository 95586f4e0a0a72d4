// A batch handler takes one `Batch<T>`.
use kconc_runtime::{subscriber, Batch, Message, Text};

#[subscriber(topic = "orders", group = "archive")]
async fn archive(_orders: Batch<Message>, _texts: Batch<Text>) {}

fn main() {}

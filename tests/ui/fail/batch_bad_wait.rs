// `batch_wait` is a duration such as "20ms".
use kconc_runtime::{subscriber, Batch, Message};

#[subscriber(topic = "orders", group = "archive", batch_wait = "a while")]
async fn archive(_orders: Batch<Message>) {}

fn main() {}

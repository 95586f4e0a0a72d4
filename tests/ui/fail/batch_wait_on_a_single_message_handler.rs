// `batch_wait` applies to batch handlers only.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "archive", batch_wait = "20ms")]
async fn archive(_order: Message) {}

fn main() {}

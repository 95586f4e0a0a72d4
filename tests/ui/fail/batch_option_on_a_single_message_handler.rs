// `max_batch` applies to batch handlers only.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "archive", max_batch = 100)]
async fn archive(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", concurrency = 0)]
async fn bill(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = orders, group = "billing", concurrency = "20")]
async fn bill(_order: Message) {}

fn main() {}

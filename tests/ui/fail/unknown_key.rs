use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", parallelism = 4)]
async fn bill(_order: Message) {}

fn main() {}

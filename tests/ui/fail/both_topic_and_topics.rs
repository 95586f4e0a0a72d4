use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", topics = ["refunds"], group = "billing")]
async fn bill(_order: Message) {}

fn main() {}

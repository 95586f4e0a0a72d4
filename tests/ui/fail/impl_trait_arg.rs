use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(_order: impl Into<Message>) {}

fn main() {}

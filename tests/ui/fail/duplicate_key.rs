use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", group = "audit")]
async fn bill(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", group_protocol = "eager")]
async fn bill(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", max_buffered = 0)]
async fn bill(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", first_poll = "inline")]
async fn bill(_order: Message) {}

fn main() {}

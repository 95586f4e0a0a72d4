use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", ordering = "keys")]
async fn bill(_order: Message) {}

fn main() {}

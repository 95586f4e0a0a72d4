use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "audit", ordering = "random")]
async fn audit(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill<T: Default>(_order: Message) {}

fn main() {}

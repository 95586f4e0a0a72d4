use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
fn bill(_order: Message) {}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(_order: Message, _extra: u32) {}

#[subscriber(topic = "orders", group = "audit")]
async fn audit() {}

fn main() {}

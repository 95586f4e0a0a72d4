use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", reply = "")]
async fn bill(_order: Message) {}

fn main() {}

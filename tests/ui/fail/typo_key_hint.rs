use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", concurency = 4)]
async fn bill(_order: Message) {}

fn main() {}

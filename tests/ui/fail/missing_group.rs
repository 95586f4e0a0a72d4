use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders")]
async fn bill(_order: Message) {}

fn main() {}

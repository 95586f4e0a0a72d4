use kconc_runtime::{subscriber, Message};

#[subscriber(group = "billing")]
async fn bill(_order: Message) {}

fn main() {}

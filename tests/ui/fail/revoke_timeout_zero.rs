use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", revoke_timeout = "0s")]
async fn bill(_order: Message) {}

fn main() {}

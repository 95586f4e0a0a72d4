use kconc_runtime::{subscriber, Message, Meta};

// The whole message is taken by value, so it must be the last argument.
#[subscriber(topic = "orders", group = "billing")]
async fn bill(_order: Message, _meta: Meta) {}

fn main() {}

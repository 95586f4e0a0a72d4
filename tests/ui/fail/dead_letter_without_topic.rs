use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", retries = 2, on_error = "dead_letter")]
async fn bill(_order: Message) {}

fn main() {}

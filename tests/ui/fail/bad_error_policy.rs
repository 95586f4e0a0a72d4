use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", on_error = "retry", retries = -1)]
async fn bill(_order: Message) {}

#[subscriber(topic = "orders", group = "audit", backoff = "1s", max_backoff = "500ms")]
async fn audit(_order: Message) {}

fn main() {}

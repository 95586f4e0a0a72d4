use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", commit_interval = "5 seconds")]
async fn bill(_order: Message) {}

#[subscriber(topic = "orders", group = "audit", shutdown_timeout = "1h")]
async fn audit(_order: Message) {}

#[subscriber(topic = "orders", group = "refunds", commit_interval = "0ms")]
async fn refund(_order: Message) {}

#[subscriber(topic = "orders", group = "payments", handler_timeout = 2)]
async fn pay(_order: Message) {}

fn main() {}

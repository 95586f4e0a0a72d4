use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", on_error = "skip", dead_letter = "orders.dlq")]
async fn bill(_order: Message) {}

fn main() {}

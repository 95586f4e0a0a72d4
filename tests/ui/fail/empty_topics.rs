use kconc_runtime::{subscriber, Message};

#[subscriber(topics = [], group = "billing")]
async fn bill(_order: Message) {}

#[subscriber(topic = "", group = "audit")]
async fn audit(_order: Message) {}

fn main() {}

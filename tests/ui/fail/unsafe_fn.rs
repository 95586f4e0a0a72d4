use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async unsafe fn bill(_order: Message) {}

fn main() {}

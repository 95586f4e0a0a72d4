use kconc_runtime::{subscriber, Message};

// Every mistake is reported in one go, not one per compile.
#[subscriber(topic = "orders", concurrency = 0, commit_interval = "soon", colour = "blue")]
fn bill(_order: Message) {}

fn main() {}

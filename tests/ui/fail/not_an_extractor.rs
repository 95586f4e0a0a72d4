use kconc_runtime::{subscriber, Meta};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(_meta: Meta, _count: u32) {}

fn main() {}

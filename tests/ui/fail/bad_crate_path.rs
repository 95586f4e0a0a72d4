// `crate = ".."` is honoured: a path that does not exist fails to resolve.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", crate = "no_such_crate")]
async fn bill(_order: Message) {}

fn main() {}

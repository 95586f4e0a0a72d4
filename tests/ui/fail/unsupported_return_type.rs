use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(order: Message) -> i64 {
    order.offset()
}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", reply = "orders.billed")]
async fn bill(order: Message) -> i64 {
    order.offset()
}

fn main() {}

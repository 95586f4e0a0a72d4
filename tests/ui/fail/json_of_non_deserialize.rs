use kconc_runtime::{subscriber, Json};

struct Order {
    id: u64,
}

#[subscriber(topic = "orders", group = "billing")]
async fn bill(order: Json<Order>) {
    let _ = order.id;
}

fn main() {}

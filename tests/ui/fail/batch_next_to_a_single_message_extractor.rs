// A batch handler takes one `Batch<T>` and only what does not come from a
// message beside it: a `Json<T>` of one message is refused at its type.
use kconc_runtime::{subscriber, Batch, Json};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[subscriber(topic = "orders", group = "archive")]
async fn archive(orders: Batch<Json<Order>>, Json(first): Json<Order>) {
    let _ = (orders.len(), first.id);
}

fn main() {}

// A batch handler returns `()`, `Result<(), E>`, `BatchOutcome` or
// `Result<BatchOutcome, E>`.
use kconc_runtime::{subscriber, Batch, Message};

#[subscriber(topic = "orders", group = "archive")]
async fn archive(orders: Batch<Message>) -> Vec<usize> {
    (0..orders.len()).collect()
}

fn main() {}

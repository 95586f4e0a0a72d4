// Batch handlers: a `Batch<T>` of any extractor, `State<T>` and `Context`
// beside it, each return type, and the batch options.
use kconc_runtime::{subscriber, Batch, BatchOutcome, Context, Json, Message, State};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(Clone)]
struct Db;

#[subscriber(
    topic = "orders",
    group = "a",
    max_batch = 500,
    max_batch_bytes = 262144,
    ordering = "key"
)]
async fn per_message(State(_db): State<Db>, orders: Batch<Json<Order>>, _cx: Context) -> BatchOutcome {
    let mut outcome = BatchOutcome::new();
    for (i, Json(order)) in orders.iter().enumerate() {
        if order.id == 0 {
            outcome.fail(i, "no id");
        }
    }
    outcome
}

#[subscriber(topic = "orders", group = "b")]
async fn whole(orders: Batch<Message>) -> Result<(), std::io::Error> {
    let _ = orders.offset(0);
    Ok(())
}

#[subscriber(topic = "orders", group = "c")]
async fn nothing(_orders: Batch<kconc_runtime::Text>) {}

#[subscriber(topic = "orders", group = "d")]
async fn fallible(orders: Batch<Message>) -> anyhow::Result<BatchOutcome> {
    let _ = orders.partition();
    Ok(BatchOutcome::new())
}

#[subscriber(topic = "orders", group = "e", reply = "orders.seen", batch_wait = "20ms")]
async fn replies(orders: Batch<Json<Order>>) -> BatchOutcome {
    let mut outcome = BatchOutcome::new();
    for (i, Json(order)) in orders.iter().enumerate() {
        outcome.reply(i, kconc_runtime::Text(format!("seen {}", order.id)));
    }
    outcome
}

fn main() {}

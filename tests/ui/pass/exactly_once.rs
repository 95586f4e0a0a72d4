// A handler whose writes and offset commit in one transaction, of one
// message and of a batch.
use kconc_runtime::sql::{sqlx, Sqlite, Tx};
use kconc_runtime::{subscriber, Batch, Json, State};

#[derive(serde::Deserialize)]
struct Order {
    id: i64,
}

#[derive(Clone)]
struct Prices;

#[subscriber(topic = "orders", group = "ledger", store = "sql", concurrency = 8)]
async fn record(
    State(_prices): State<Prices>,
    mut tx: Tx<Sqlite>,
    Json(order): Json<Order>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?1)")
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[subscriber(topic = "orders", group = "archive", store = "sql", max_batch = 200)]
async fn archive(mut tx: Tx<Sqlite>, orders: Batch<Json<Order>>) -> Result<(), sqlx::Error> {
    for Json(order) in orders.iter() {
        sqlx::query("INSERT INTO archive (id) VALUES (?1)")
            .bind(order.id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

fn main() {}

use kconc_runtime::{subscriber, Json, NonRetryable};

#[derive(serde::Serialize)]
struct Done {
    id: u64,
}

// Returns what only a reply publishes, but has no `reply = ".."`.
#[subscriber(topic = "payments", group = "payments")]
async fn pay(Json(id): Json<u64>) -> Result<Json<Done>, NonRetryable> {
    Ok(Json(Done { id }))
}

// The same behind an alias: the compiler's note says it.
type Answer = Json<Done>;

#[subscriber(topic = "payments", group = "audit")]
async fn audit(Json(id): Json<u64>) -> Answer {
    Json(Done { id })
}

fn main() {}

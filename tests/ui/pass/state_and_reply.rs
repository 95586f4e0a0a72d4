use kconc_runtime::{subscriber, Json, Message, Reply, State};

#[derive(Clone)]
struct Pool;

#[subscriber(topic = "orders", group = "billing", reply = "orders.billed")]
async fn bill(State(_pool): State<Pool>, order: Message) -> Result<Vec<Reply>, std::io::Error> {
    Ok(vec![Reply::new(order.offset().to_string()).key("k").header("h", "v")])
}

#[subscriber(topic = "orders", group = "audit", reply = "orders.audited")]
async fn audit(Json(n): Json<u64>) -> Option<Json<u64>> {
    (n > 0).then_some(Json(n))
}

// Run by tests/macro_pass.rs (with the other fixtures' subscribers).
pub(crate) fn main() {
    let subs = kconc_runtime::testing::registered();
    for name in ["bill", "audit"] {
        assert!(
            subs.iter()
                .any(|s| s.name().ends_with(&format!("state_and_reply::{name}"))),
            "{name} registered"
        );
    }
}

use kconc_runtime::{subscriber, Json, Key, Meta};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

// Orders of one customer (the key) are handled one at a time, in offset
// order; different customers concurrently.
#[subscriber(
    topic = "orders",
    group = "billing",
    concurrency = 50,
    ordering = "key",
    max_buffered = 200
)]
async fn bill_by_customer(customer: Key<String>, order: Json<Order>, meta: Meta) -> anyhow::Result<()> {
    let _ = (customer.0, order.id, meta.offset);
    Ok(())
}

// Run by tests/macro_pass.rs (with the other fixtures' subscribers).
pub(crate) fn main() {
    let subs = kconc_runtime::testing::registered();
    let s = subs.iter().find(|s| s.name().ends_with("::bill_by_customer"));
    assert_eq!(s.map(|s| s.ordering_mode()), Some(kconc_runtime::OrderingMode::Key));
}

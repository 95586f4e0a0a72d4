use kconc_runtime::{subscriber, Json, Key, Meta};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

// Orders of one customer (the key) are handled one at a time, in offset
// order; different customers concurrently.
#[subscriber(topic = "orders", group = "billing", concurrency = 50, ordering = "key", max_buffered = 200)]
async fn bill(customer: Key<String>, order: Json<Order>, meta: Meta) -> anyhow::Result<()> {
    let _ = (customer.0, order.id, meta.offset);
    Ok(())
}

fn main() {
    let subs = kconc_runtime::App::from_registry();
    let s = subs.subscribers().next().unwrap();
    assert_eq!(s.ordering_mode(), kconc_runtime::OrderingMode::Key);
}

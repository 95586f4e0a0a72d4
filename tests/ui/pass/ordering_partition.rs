use kconc_runtime::{subscriber, Message};

// Each partition one message at a time, partitions concurrently.
#[subscriber(topic = "ledger", group = "ledger", concurrency = 12, ordering = "partition")]
async fn post(_entry: Message) {}

fn main() {
    let app = kconc_runtime::App::from_registry();
    let s = app.subscribers().next().unwrap();
    assert_eq!(s.ordering_mode(), kconc_runtime::OrderingMode::Partition);
}

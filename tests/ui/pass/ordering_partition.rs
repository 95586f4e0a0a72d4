use kconc_runtime::{subscriber, Message};

// Each partition one message at a time, partitions concurrently.
#[subscriber(topic = "ledger", group = "ledger", concurrency = 12, ordering = "partition")]
async fn post(_entry: Message) {}

// Run by tests/macro_pass.rs (with the other fixtures' subscribers).
pub(crate) fn main() {
    let subs = kconc_runtime::testing::registered();
    let s = subs.iter().find(|s| s.name().ends_with("::post"));
    assert_eq!(
        s.map(|s| s.ordering_mode()),
        Some(kconc_runtime::OrderingMode::Partition)
    );
}

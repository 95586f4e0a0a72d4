use kconc_runtime::{subscriber};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(order: String) {
    let _ = order;
}

fn main() {}

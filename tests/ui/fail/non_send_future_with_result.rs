use std::rc::Rc;

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(order: Message) -> anyhow::Result<()> {
    let shared = Rc::new(order.offset());
    tokio::task::yield_now().await;
    let _ = shared;
    Ok(())
}

fn main() {}

use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", concurrency = 4)]
async fn bill(order: Message) -> anyhow::Result<()> {
    let _text = order.payload_str()?;
    Ok(())
}

fn main() {}

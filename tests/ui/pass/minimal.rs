use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(_order: Message) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

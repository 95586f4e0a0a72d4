use kconc_runtime::{subscriber, Message};

struct Biller;

impl Biller {
    #[subscriber(topic = "orders", group = "billing")]
    async fn bill(&self, _order: Message) {}
}

fn main() {}

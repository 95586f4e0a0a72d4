use kconc_runtime::{subscriber, Message, State};

struct Pool;

#[subscriber(topic = "orders", group = "billing")]
async fn bill(_pool: State<Pool>, _order: Message) {}

fn main() {}

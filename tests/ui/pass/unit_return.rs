use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "audit", group = "audit")]
async fn audit(msg: Message) {
    let _ = msg.offset();
}

fn main() {}

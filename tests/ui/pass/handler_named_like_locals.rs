// The generated adapter's locals cannot collide with the user's names: a
// handler called `message` (taking `message`) is still the one registered.
use kconc_runtime::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing")]
async fn message(message: Message) {
    let _ = message.offset();
}

#[subscriber(topic = "orders", group = "audit")]
async fn future(handler: Message) -> Result<(), std::io::Error> {
    let _ = handler;
    Ok(())
}

#[allow(dead_code)]
fn handler() {}

#[allow(dead_code)]
fn output() {}

fn main() {}

// Options passed through a `macro_rules!` arrive as invisible groups; they
// are read like literals written in place. A raw identifier is a valid
// handler name, and a zero `shutdown_timeout` (do not wait) is allowed.
use kconc_runtime::{subscriber, Message};

macro_rules! handler {
    ($topic:literal, $group:literal, $concurrency:literal) => {
        #[subscriber(topic = $topic, group = $group, concurrency = $concurrency, shutdown_timeout = "0s")]
        async fn r#type(_order: Message) {}
    };
}

handler!("orders", "billing", 8);

fn main() {}

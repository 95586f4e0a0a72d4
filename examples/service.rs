//! The smallest kconc service: one handler and `main!()`.
//!
//! Run with:
//!
//! ```text
//! cargo run --example service -- --help                      # the flags every kconc program has
//! cargo run --example service                                # embedded broker (idle: nothing produces to it); Ctrl-C to stop
//! cargo run --example service -- --brokers localhost:9092    # a real cluster: consumes topic `events`
//! ```
//!
//! `main!(default_brokers = "embedded")` makes the example run on a machine
//! with no Kafka; a real service writes plain `kconc_runtime::main!();`,
//! whose default is `localhost:9092`.

use kconc_runtime::{subscriber, Message};

/// Logs each event's key and size.
#[subscriber(topic = "events", group = "event-logger", concurrency = 8)]
async fn log_event(event: Message) -> Result<(), kconc_runtime::PayloadError> {
    let key = event.key_str().unwrap_or("<no key>");
    let size = event.payload().map_or(0, <[u8]>::len);
    println!(
        "{}[{}]@{}: key {key}, {size} bytes",
        event.topic(),
        event.partition(),
        event.offset()
    );
    Ok(())
}

kconc_runtime::main!(default_brokers = "embedded");

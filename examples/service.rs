//! The smallest kconc service: one handler and `main!()`.
//!
//! Run with:
//!
//! ```text
//! cargo run --example service -- --help                      # the flags every kconc program has
//! cargo run --example service -- --embedded-address-file b.addr   # embedded broker; Ctrl-C to stop
//! cargo run --example service -- --brokers "$(cat b.addr)" produce events k=hello   # from another shell
//! cargo run --example service -- --brokers localhost:9092    # a real cluster: consumes topic `events`
//! ```
//!
//! `main!(default_brokers = "embedded")` makes the example run on a machine
//! with no Kafka; a real service writes plain `kconc_runtime::main!();`,
//! whose default is `localhost:9092`.

use kconc_runtime::{subscriber, Bytes, Key, Meta};

/// Logs each event's key and size. The arguments are extractors: a keyless
/// event or a tombstone arrives as `None`; a key that is not UTF-8 fails
/// that event alone (logged with its topic, partition and offset).
#[subscriber(topic = "events", group = "event-logger", concurrency = 8)]
async fn log_event(meta: Meta, key: Option<Key<String>>, body: Option<Bytes>) {
    let key = key.map_or_else(|| "<no key>".to_owned(), Key::into_inner);
    let size = body.map_or(0, |b| b.len());
    println!(
        "{}[{}]@{}: key {key}, {size} bytes",
        meta.topic, meta.partition, meta.offset
    );
}

kconc_runtime::main!(default_brokers = "embedded");

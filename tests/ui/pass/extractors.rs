use kconc_runtime::{subscriber, Bytes, Context, Headers, Json, Key, Message, Meta, Text};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[derive(serde::Deserialize)]
struct CustomerKey {
    customer: String,
}

#[subscriber(topic = "orders", group = "json")]
async fn json(order: Json<Order>, key: Key<String>, meta: Meta) -> anyhow::Result<()> {
    println!(
        "{} {} {}@{} attempt {}",
        order.id, *key, meta.partition, meta.offset, meta.attempt
    );
    Ok(())
}

#[subscriber(topic = "orders", group = "text")]
async fn text(body: Text, headers: Headers, cx: Context) {
    let trace = headers.get_str("traceparent").unwrap_or("-");
    if !cx.is_shutting_down() {
        println!("{} {trace} {}", body.len(), cx.group());
    }
}

#[subscriber(topic = "orders", group = "raw")]
async fn raw(body: Bytes, key: Key<Vec<u8>>) {
    println!("{} {}", body.len(), key.len());
}

#[subscriber(topic = "orders", group = "optional")]
async fn optional(body: Option<Json<Order>>, key: Option<Key<Json<CustomerKey>>>, tombstone: Option<Text>) {
    println!(
        "{} {:?} {}",
        body.is_some(),
        key.map(|k| k.0 .0.customer),
        tombstone.is_none()
    );
}

#[subscriber(topic = "orders", group = "whole")]
async fn whole(meta: Meta, msg: Message) {
    assert_eq!(meta.offset, msg.offset());
}

#[subscriber(topic = "orders", group = "none")]
async fn none() {}

fn main() {}

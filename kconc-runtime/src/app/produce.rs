//! `PROGRAM produce TOPIC [KEY=]VALUE..`: a generated program sends a few
//! messages to a cluster (the embedded one of a running service, say) and
//! exits, so a new user can watch their service work without writing a
//! producer.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::config::{self, Cli, ProduceArgs, DEFAULT_BROKERS, EMBEDDED};
use crate::error::Error;

/// How long the topic check and each delivery may take.
const WAIT: Duration = Duration::from_secs(30);

/// Sends `args`' messages (or standard input's lines) and says where they
/// went, one line.
pub(crate) fn produce(cli: &Cli, args: &ProduceArgs, default_brokers: Option<&str>) -> Result<String, Error> {
    let settings = config::resolve_from_process(cli)?;
    let brokers = settings
        .brokers
        .as_deref()
        .or(default_brokers)
        .unwrap_or(DEFAULT_BROKERS)
        .to_owned();
    if brokers == EMBEDDED {
        return Err(Error::Config(
            "produce sends to a running cluster, and `--brokers embedded` would start a new, empty one: give the \
             address the service on the embedded broker logged (`embedded broker at HOST:PORT`), or the one its \
             --embedded-address-file holds: --brokers \"$(cat FILE)\" produce .."
                .into(),
        ));
    }
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .ok_or_else(|| Error::Config(format!("--header `{h}`: expected NAME=VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let messages = if args.messages.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Produce(format!("cannot read standard input: {e}")))?
    } else {
        args.messages.clone()
    };
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &brokers);
    for (k, v) in &settings.properties {
        client.set(k, v);
    }
    let mut producer = crate::context::producer_config("produce", &client);
    producer
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", WAIT.as_millis().to_string());
    exists(&client, &args.topic, &brokers)?;
    let producer: FutureProducer = producer
        .create()
        .map_err(|e| Error::Produce(format!("cannot create the producer: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Produce(format!("cannot start the tokio runtime: {e}")))?;
    let sent = runtime.block_on(send(&producer, args, &headers, &messages))?;
    Ok(said(&args.topic, &sent))
}

/// Fails unless `topic` exists on the cluster.
fn exists(client: &ClientConfig, topic: &str, brokers: &str) -> Result<(), Error> {
    let mut c = client.clone();
    c.set("allow.auto.create.topics", "false");
    let consumer: BaseConsumer = c
        .create()
        .map_err(|e| Error::Produce(format!("cannot create a metadata client: {e}")))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), WAIT)
        .map_err(|e| Error::Produce(format!("the cluster at {brokers} did not answer: {e}")))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => Err(Error::Config(format!(
            "topic `{topic}` does not exist on the cluster at {brokers}"
        ))),
    }
}

/// Sends each message in order and waits for every acknowledgement; the
/// (partition, offset) of each.
async fn send(
    producer: &FutureProducer,
    args: &ProduceArgs,
    headers: &[(&str, &str)],
    messages: &[String],
) -> Result<Vec<(i32, i64)>, Error> {
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let (key, value) = split(m);
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&args.topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        if !headers.is_empty() {
            let mut hs = OwnedHeaders::new_with_capacity(headers.len());
            for (name, v) in headers {
                hs = hs.insert(Header {
                    key: name,
                    value: Some(*v),
                });
            }
            record = record.headers(hs);
        }
        // Waits while librdkafka's queue is full (up to WAIT).
        pending.push(producer.send(record, WAIT));
    }
    let mut sent = Vec::with_capacity(pending.len());
    for delivery in futures_util::future::join_all(pending).await {
        match delivery {
            Ok(d) => sent.push((d.partition, d.offset)),
            Err((e, _)) => return Err(Error::Produce(format!("cannot send to `{}`: {e}", args.topic))),
        }
    }
    Ok(sent)
}

/// `KEY=VALUE`, or a value without a key: one with no `=`, an empty key,
/// or a key that would hold a space, a quote or a bracket (JSON).
fn split(message: &str) -> (Option<&str>, &str) {
    match message.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "{[\"".contains(c)) => (Some(k), v),
        Some(("", v)) => (None, v),
        _ => (None, message),
    }
}

/// "sent 3 messages to `orders` (partition 0: offsets 4-5; partition 2: offset 0)".
fn said(topic: &str, sent: &[(i32, i64)]) -> String {
    let mut by_partition: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for &(p, o) in sent {
        let e = by_partition.entry(p).or_insert((o, o));
        e.0 = e.0.min(o);
        e.1 = e.1.max(o);
    }
    let places: Vec<String> = by_partition
        .iter()
        .map(|(p, (lo, hi))| match lo == hi {
            true => format!("partition {p}: offset {lo}"),
            false => format!("partition {p}: offsets {lo}-{hi}"),
        })
        .collect();
    let n = sent.len();
    let s = if n == 1 { "" } else { "s" };
    format!("sent {n} message{s} to `{topic}` ({})", places.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_a_key_only_where_it_reads_as_one() {
        assert_eq!(split("cust-1=hello"), (Some("cust-1"), "hello"));
        assert_eq!(split("cust-1={\"a\":\"b=c\"}"), (Some("cust-1"), "{\"a\":\"b=c\"}"));
        assert_eq!(split("hello"), (None, "hello"));
        assert_eq!(split("=a=b"), (None, "a=b"));
        assert_eq!(split("{\"a\":\"b=c\"}"), (None, "{\"a\":\"b=c\"}"));
        assert_eq!(split("[\"x=1\"]"), (None, "[\"x=1\"]"));
        assert_eq!(split("\"x=1\""), (None, "\"x=1\""));
        assert_eq!(split("a b=c"), (None, "a b=c"));
    }

    #[test]
    fn what_was_sent_is_said_per_partition() {
        assert_eq!(
            said("orders", &[(0, 4), (2, 0), (0, 5)]),
            "sent 3 messages to `orders` (partition 0: offsets 4-5; partition 2: offset 0)"
        );
        assert_eq!(said("o", &[(1, 7)]), "sent 1 message to `o` (partition 1: offset 7)");
    }
}

//! The AsyncAPI 3.0 document of an app's subscribers: what `--asyncapi`
//! prints and the HTTP endpoint serves at `/asyncapi.json`, made from the
//! registrations alone (nothing connects).
//!
//! - a channel per topic: each subscribed topic, each reply topic and each
//!   dead-letter topic, with its Kafka binding;
//! - per subscriber and subscribed topic, a `receive` operation with the
//!   consumer group as its Kafka binding (`groupId`), its reply (the reply
//!   topic) where it has one, and kconc's settings and error policy as
//!   extensions (`x-kconc`, `x-kconc-error-policy`);
//! - per subscriber with a dead-letter topic, a `send` operation to it;
//! - a message per operation, with the JSON schema of the payload type the
//!   handler decodes (`Json<T>`) or replies with, and of its key type
//!   (`Key<T>`, as the Kafka binding's `key`) where the type derives
//!   `schemars::JsonSchema`;
//!   where it does not, or the handler reads the record as it is, the
//!   message says so in `x-kconc-payload` (`x-kconc-key`). Named schemas
//!   are in `components.schemas`.

use serde_json::{json, Map, Value};

use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;

use crate::describe::{Described, Part};
use crate::policy::OnError;
use crate::subscriber::Subscriber;

/// The version of the Kafka bindings written.
const KAFKA_BINDING: &str = "0.5.0";

/// A name as AsyncAPI's keys allow it (`^[\w\d.\-_]+$`): every other
/// character becomes `_` (`billing::bill` is `billing__bill`).
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `d` in whole milliseconds, as JSON can hold them.
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Adds to `message` what `described` says of it: the payload's schema
/// (or why there is none) and the key's, as the Kafka binding.
fn describe_into(message: &mut Value, described: &Described, generator: &mut SchemaGenerator) {
    let Some(map) = message.as_object_mut() else {
        return;
    };
    match described.payload {
        Some(Part {
            schema: Some(schema), ..
        }) => {
            map.insert("payload".to_owned(), schema(generator).to_value());
        }
        Some(Part {
            type_name,
            schema: None,
        }) => {
            map.insert(
                "x-kconc-payload".to_owned(),
                json!(format!(
                    "`{type_name}`: no JSON schema (derive schemars::JsonSchema for it to have one here)"
                )),
            );
        }
        None => {
            map.insert(
                "x-kconc-payload".to_owned(),
                json!("no payload type: the handler reads (or replies with) the record as it is"),
            );
        }
    }
    match described.key {
        Some(Part {
            schema: Some(schema), ..
        }) => {
            let key = schema(generator).to_value();
            map.insert(
                "bindings".to_owned(),
                json!({ "kafka": { "key": key, "bindingVersion": KAFKA_BINDING } }),
            );
        }
        Some(Part {
            type_name,
            schema: None,
        }) => {
            map.insert(
                "x-kconc-key".to_owned(),
                json!(format!("`{type_name}`: no JSON schema")),
            );
        }
        None => {}
    }
}

/// Adds message `name` (`body`) to the components and to `topic`'s channel
/// (made on first use); returns what an operation names: the channel, and
/// the message in it.
fn add_message(
    channels: &mut Map<String, Value>,
    messages: &mut Map<String, Value>,
    topic: &str,
    name: &str,
    body: Value,
) -> (Value, Value) {
    messages.insert(name.to_owned(), body);
    let channel_key = key(topic);
    let channel = channels.entry(channel_key.clone()).or_insert_with(|| {
        json!({
            "address": topic,
            "messages": {},
            "bindings": { "kafka": { "topic": topic, "bindingVersion": KAFKA_BINDING } },
        })
    });
    if let Some(list) = channel.get_mut("messages").and_then(Value::as_object_mut) {
        list.insert(
            name.to_owned(),
            json!({ "$ref": format!("#/components/messages/{name}") }),
        );
    }
    (
        json!({ "$ref": format!("#/channels/{channel_key}") }),
        json!({ "$ref": format!("#/channels/{channel_key}/messages/{name}") }),
    )
}

/// The document of `subs` (each with the consumer group it joins, its
/// prefix applied), titled `title`, for a cluster at `brokers` (no server
/// is listed for the embedded one).
pub(crate) fn document(title: &str, brokers: &str, subs: &[(&Subscriber, String)]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    // Named types' schemas go to components.schemas, referenced from there.
    let mut settings = SchemaSettings::draft07();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    for (sub, group) in subs {
        let s = &sub.settings;
        let sub_key = key(&sub.name);
        let reply = s.reply.as_deref().map(|topic| {
            let message = format!("{sub_key}.reply");
            let mut body = json!({
                "name": message,
                "summary": format!("What `{}` returns, sent with the key of the message it answers", sub.name),
            });
            let reply = Described {
                payload: sub.described.reply,
                ..Described::default()
            };
            describe_into(&mut body, &reply, &mut generator);
            let (channel, listed) = add_message(&mut channels, &mut messages, topic, &message, body);
            json!({ "channel": channel, "messages": [listed] })
        });
        for topic in &sub.topics {
            let op = if sub.topics.len() == 1 {
                sub_key.clone()
            } else {
                format!("{sub_key}.{}", key(topic))
            };
            let message = format!("{op}.message");
            let mut body = json!({
                "name": message,
                "summary": format!("A record of `{topic}` as `{}` reads it", sub.name),
            });
            describe_into(&mut body, &sub.described, &mut generator);
            let (channel, listed) = add_message(&mut channels, &mut messages, topic, &message, body);
            let mut operation = json!({
                "action": "receive",
                "channel": channel,
                "summary": format!("`{}` handles each record of `{topic}`", sub.name),
                "messages": [listed],
                "bindings": {
                    "kafka": {
                        "groupId": { "type": "string", "enum": [group] },
                        "bindingVersion": KAFKA_BINDING,
                    }
                },
                "x-kconc": {
                    "subscriber": sub.name,
                    "handler": sub.origin,
                    "concurrency": s.concurrency,
                    "ordering": s.ordering.to_string(),
                    "group_protocol": s.group_protocol.as_str(),
                    "handler_timeout_ms": s.handler_timeout.map(ms),
                },
                "x-kconc-error-policy": {
                    "retries": s.retries,
                    "backoff_ms": ms(s.backoff),
                    "max_backoff_ms": ms(s.max_backoff),
                    "on_error": match &s.on_error {
                        OnError::Skip => "skip",
                        OnError::Stop => "stop",
                        OnError::DeadLetter(_) => "dead_letter",
                    },
                    "dead_letter": s.on_error.dead_letter_topic(),
                },
            });
            if let (Some(reply), Some(map)) = (&reply, operation.as_object_mut()) {
                map.insert("reply".to_owned(), reply.clone());
            }
            operations.insert(op, operation);
        }
        if let Some(topic) = s.on_error.dead_letter_topic() {
            let message = format!("{sub_key}.dead_letter");
            let mut body = json!({
                "name": message,
                "summary": format!(
                    "A record `{}` failed for good: its key, payload and headers as read, and kconc-* headers saying where it came from and why it failed",
                    sub.name
                ),
            });
            describe_into(&mut body, &sub.described, &mut generator);
            let (channel, listed) = add_message(&mut channels, &mut messages, topic, &message, body);
            operations.insert(
                message,
                json!({
                    "action": "send",
                    "channel": channel,
                    "summary": format!("`{}` sends here what failed after its last attempt", sub.name),
                    "messages": [listed],
                }),
            );
        }
    }
    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": "unversioned",
            "description": "Generated by kconc from the service's subscribers.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    });
    let schemas = generator.take_definitions(true);
    if let (false, Some(components)) = (
        schemas.is_empty(),
        doc.get_mut("components").and_then(Value::as_object_mut),
    ) {
        components.insert("schemas".to_owned(), Value::Object(schemas));
    }
    if brokers != crate::config::EMBEDDED {
        if let Some(map) = doc.as_object_mut() {
            let servers: Map<String, Value> = brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .enumerate()
                .map(|(i, host)| (format!("broker-{i}"), json!({ "host": host, "protocol": "kafka" })))
                .collect();
            map.insert("servers".to_owned(), Value::Object(servers));
        }
    }
    doc
}

/// The title of the document: the program's name (its file's), else
/// `kconc service`.
pub(crate) fn program_title() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "kconc service".to_owned())
}

/// `value` as YAML (block style; strings double-quoted as JSON writes
/// them, which YAML reads the same).
pub(crate) fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_into(&mut out, value, 0);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("null".to_owned()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(Value::String(s.clone()).to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".to_owned()),
        Value::Object(o) if o.is_empty() => Some("{}".to_owned()),
        _ => None,
    }
}

/// A map key as YAML: plain where YAML reads it back as the same string
/// (`asyncapi`, `$ref`, `orders.dlq`), else double-quoted.
fn yaml_key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '$'))
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-'))
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn yaml_into(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let k = yaml_key(k);
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml_into(out, v, indent + 2);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The item's first line after the dash, the rest
                        // indented under it.
                        let mut inner = String::new();
                        yaml_into(&mut inner, v, indent + 2);
                        let inner = inner.trim_start();
                        out.push_str(&format!("{pad}- {inner}"));
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push_str(&format!("{pad}{s}\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_only_what_asyncapi_allows() {
        assert_eq!(key("billing::bill"), "billing__bill");
        assert_eq!(key("orders.v1-x_y"), "orders.v1-x_y");
    }

    #[test]
    fn yaml_nests_maps_and_lists_by_indent() {
        let v = json!({
            "a": "x: \"quoted\"\n",
            "b": [1, {"c": true, "d": [], "e": {}}, "s"],
            "f": {"g": null, "h": [{"i": 1, "j": 2}]},
        });
        let yaml = to_yaml(&v);
        assert!(yaml.contains("\nb:\n  - 1\n  - c: true\n    d: []\n"), "{yaml}");
        assert!(yaml.contains("\n  h:\n    - i: 1\n      j: 2\n"), "{yaml}");
        assert!(yaml.starts_with("a: \"x: \\\"quoted\\\"\\n\"\n"), "{yaml}");
        for (key, as_yaml) in [
            ("$ref", "$ref"),
            ("orders.dlq", "orders.dlq"),
            ("yes", "\"yes\""),
            ("a b", "\"a b\""),
            ("-x", "\"-x\""),
        ] {
            assert_eq!(yaml_key(key), as_yaml);
        }
    }
}

//! The AsyncAPI document of an app's subscribers (`--asyncapi`,
//! `/asyncapi.json`): valid against AsyncAPI 3.0.0's JSON schema
//! (`tests/data/asyncapi-3.0.0.json`, see `tests/data/README.md`), and saying
//! what the code says: a channel per topic, reply and dead-letter topic, a
//! receive operation per subscriber and topic with its (prefixed) group,
//! its reply, a send operation to its dead-letter topic, and its error
//! policy.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use kconc_runtime::{subscriber, App, Cli, Json, Key, Message, Subscriber};
use serde_json::Value;

/// A payload type with a schema (through kconc's `schemars`).
#[derive(serde::Deserialize, kconc_runtime::schemars::JsonSchema)]
#[schemars(crate = "kconc_runtime::schemars")]
#[allow(dead_code)]
struct Refund {
    /// The refund's id.
    id: u64,
    reason: Option<String>,
}

/// One without.
#[derive(serde::Deserialize, serde::Serialize)]
#[allow(dead_code)]
struct Opaque {
    blob: String,
}

// Registered handlers (never run here): what `App::from_registry` reads.
#[subscriber(topic = "refunds", group = "g-refunds")]
async fn refund(_refund: Json<Refund>, _customer: Key<String>) {}

#[subscriber(topic = "opaque", group = "g-opaque", dead_letter = "opaque.dlq")]
async fn opaque(_o: Json<Opaque>) {}

#[subscriber(topic = "raw", group = "g-raw")]
async fn raw(_m: Message) {}

#[subscriber(topic = "asked", group = "g-asked", reply = "answers")]
async fn answer(_m: Message) -> Option<Json<Opaque>> {
    None
}

/// Checks `doc` against AsyncAPI 3.0.0's schema; fails listing every error.
fn assert_valid(doc: &Value) {
    let schema: Value = serde_json::from_str(include_str!("data/asyncapi-3.0.0.json")).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not valid AsyncAPI 3.0.0:\n{}\n{doc:#}",
        errors.join("\n")
    );
}

fn app() -> App {
    let cli = Cli::try_from_iter(["svc", "--group-prefix", "staging-"]).unwrap();
    App::new()
        .brokers("kafka-1:9092,kafka-2:9092")
        .property("sasl.password", "hunter2-do-not-print")
        .subscriber(
            Subscriber::new("billing::bill", ["orders", "refunds"], "billing", |_m: Message| async {
            })
            .retries(3)
            .dead_letter("orders.dlq"),
        )
        .subscriber(Subscriber::new("audit", ["orders"], "audit", |_m: Message| async {}).reply("audit.out"))
        .configure_with_env(&cli, Vec::new())
}

#[test]
fn the_document_is_valid_asyncapi_and_says_what_the_code_says() {
    let doc = app().asyncapi("svc").unwrap();
    assert_valid(&doc);
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channels: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(channels.len(), 4, "{channels:?}");
    for topic in ["orders", "refunds", "orders.dlq", "audit.out"] {
        assert_eq!(doc["channels"][topic]["address"], topic);
        assert_eq!(doc["channels"][topic]["bindings"]["kafka"]["topic"], topic);
    }
    let ops = &doc["operations"];
    for (op, topic) in [("billing__bill.orders", "orders"), ("billing__bill.refunds", "refunds")] {
        assert_eq!(ops[op]["action"], "receive", "{op}");
        assert_eq!(ops[op]["channel"]["$ref"], format!("#/channels/{topic}"));
        assert_eq!(
            ops[op]["bindings"]["kafka"]["groupId"]["enum"][0], "staging-billing",
            "the group as the consumer joins it"
        );
        assert_eq!(ops[op]["x-kconc-error-policy"]["retries"], 3);
        assert_eq!(ops[op]["x-kconc-error-policy"]["dead_letter"], "orders.dlq");
    }
    assert_eq!(ops["billing__bill.dead_letter"]["action"], "send");
    assert_eq!(
        ops["billing__bill.dead_letter"]["channel"]["$ref"],
        "#/channels/orders.dlq"
    );
    assert_eq!(ops["audit"]["reply"]["channel"]["$ref"], "#/channels/audit.out");
    assert_eq!(ops["audit"]["x-kconc-error-policy"]["on_error"], "skip");
    // Every reference points at something in the document.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let path = r.split('"').next().unwrap().trim_start_matches("#/");
        let target = path.split('/').fold(&doc, |v, part| &v[part]);
        assert!(!target.is_null(), "dangling $ref #/{path}");
    }
    assert_eq!(doc["servers"]["broker-0"]["host"], "kafka-1:9092");
    assert!(!text.contains("hunter2"), "a secret in the document");
}

/// A `#[subscriber]` handler's `Json<T>` and `Key<T>` give the messages'
/// payload and key schemas where `T` derives `JsonSchema`; where it does
/// not, or the handler takes the record as it is, the message says so and
/// the build does not fail.
#[test]
fn the_handlers_payload_and_key_types_give_their_schemas() {
    let doc = App::from_registry().asyncapi("svc").unwrap();
    assert_valid(&doc);
    let messages = &doc["components"]["messages"];
    let refund = &messages["asyncapi__refund.message"];
    assert_eq!(refund["payload"]["$ref"], "#/components/schemas/Refund", "{doc:#}");
    let schema = &doc["components"]["schemas"]["Refund"];
    assert_eq!(schema["properties"]["id"]["type"], "integer", "{schema:#}");
    assert_eq!(schema["properties"]["id"]["description"], "The refund's id.");
    assert_eq!(schema["required"], serde_json::json!(["id"]));
    assert_eq!(refund["bindings"]["kafka"]["key"]["type"], "string");
    let opaque = &messages["asyncapi__opaque.message"];
    assert!(opaque.get("payload").is_none());
    let said = opaque["x-kconc-payload"].as_str().unwrap();
    assert!(said.contains("Opaque`: no JSON schema"), "{said}");
    assert_eq!(
        messages["asyncapi__opaque.dead_letter"]["x-kconc-payload"], opaque["x-kconc-payload"],
        "a dead letter carries the payload as read"
    );
    let raw = messages["asyncapi__raw.message"]["x-kconc-payload"].as_str().unwrap();
    assert!(raw.starts_with("no payload type"), "{raw}");
    let answer = messages["asyncapi__answer.reply"]["x-kconc-payload"].as_str().unwrap();
    assert!(
        answer.contains("Opaque`: no JSON schema"),
        "the reply's type, named: {answer}"
    );
}

/// A configuration `App::start` refuses is refused here too.
#[test]
fn a_bad_configuration_fails_as_a_run_would() {
    let err = App::new()
        .subscriber(Subscriber::new("a", ["t"], "g", |_m: Message| async {}).concurrency(0))
        .asyncapi("svc")
        .unwrap_err();
    assert!(err.to_string().contains("concurrency"), "{err}");
}

/// `--asyncapi` prints it from `main!()` (the billing example: a reply, a
/// dead-letter topic, a start-up hook) without connecting anywhere, as
/// JSON, or YAML with `--asyncapi-format yaml`.
#[test]
fn the_program_prints_it_as_json_or_yaml() {
    let run = |args: &[&str]| {
        let out = Command::new(example_binary("billing"))
            .args(args)
            .env_remove("KCONC_BROKERS")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("librdkafka"),
            "it connected: {out:?}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&run(&["--asyncapi"])).unwrap();
    assert_valid(&json);
    assert_eq!(
        json["operations"]["billing"]["reply"]["channel"]["$ref"],
        "#/channels/orders.billed"
    );
    assert_eq!(json["operations"]["billing.dead_letter"]["action"], "send");
    assert_eq!(
        json["components"]["messages"]["billing.message"]["payload"]["$ref"],
        "#/components/schemas/Order"
    );
    assert_eq!(
        json["components"]["schemas"]["Order"]["required"],
        serde_json::json!(["id", "amount"])
    );
    // What `bill` returns (`Result<Json<Billed>, NonRetryable>`) is the reply's.
    assert_eq!(
        json["components"]["messages"]["billing.reply"]["payload"]["$ref"],
        "#/components/schemas/Billed"
    );
    assert!(json["components"]["schemas"]["Billed"]["properties"]["balance"].is_object());
    let yaml = run(&["--asyncapi", "--asyncapi-format", "yaml"]);
    assert!(yaml.starts_with("asyncapi: \"3.0.0\"\n"), "{yaml}");
    assert!(
        yaml.contains("\n  orders.dlq:\n    address: \"orders.dlq\"\n"),
        "{yaml}"
    );
}

/// A running app's HTTP endpoint serves the same document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_serves_it() {
    let topic = "asyncapi-served";
    let cluster = cluster(topic, 1);
    let app = test_app(cluster.bootstrap_servers())
        .http("127.0.0.1:0")
        .subscriber(Subscriber::new("served", [topic], "g-served", |_m: Message| async {}))
        .start_in_test_mode()
        .unwrap();
    let (code, body) = get(app.http_addr().unwrap(), "/asyncapi.json").await.unwrap();
    app.shutdown().await;
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_valid(&doc);
    assert_eq!(
        doc["operations"]["served"]["channel"]["$ref"],
        "#/channels/asyncapi-served"
    );
}

//! Whether the cluster speaks the consumer group protocol (KIP-848).
//!
//! A member of `group.protocol=consumer` on a broker without the
//! ConsumerGroupHeartbeat API never joins: librdkafka marks the coordinator
//! dead and looks it up again, forever, and says why only in its debug log
//! (`rdkafka_request.c`, "ConsumerGroupHeartbeatRequest not supported by
//! broker"). So a subscriber under that protocol asks once, on a thread of
//! its own, with a short-lived client of the same connection settings: the
//! APIs the broker lists in its ApiVersions answer reach that client's log
//! with `debug=feature`. A broker that answers without the API stops the
//! subscriber with a reason that says what to do; one that cannot be asked
//! (down, slow) leaves the subscriber as it is.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::ClientConfig;

/// librdkafka's name of the API, as its debug log prints it.
const HEARTBEAT_API: &str = "ApiKey ConsumerGroupHeartbeat (68)";

/// What the probe's client saw in its log.
#[derive(Default)]
struct Seen {
    /// A broker listed its APIs.
    listed: bool,
    /// One of them was the consumer protocol's heartbeat.
    heartbeat: bool,
}

#[derive(Default)]
struct ProbeContext(Mutex<Seen>);

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, line: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.listed |= line.contains("Broker API support");
            seen.heartbeat |= line.contains(HEARTBEAT_API);
        }
    }

    // Its errors (a broker down) are the subscriber's own client's to report.
    fn error(&self, _error: rdkafka::error::KafkaError, _reason: &str) {}
}

impl ConsumerContext for ProbeContext {}

/// Whether the brokers of `config` (a subscriber's consumer settings) lack
/// the consumer group protocol: `Some(true)` if one answered without it,
/// `Some(false)` if it is there, `None` if none answered within `timeout`.
pub(super) fn lacks_consumer_protocol(config: &ClientConfig, timeout: Duration) -> Option<bool> {
    let mut config = config.clone();
    // A client outside the group: no member, no commits.
    for group_only in [
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.remote.assignor",
    ] {
        config.remove(group_only);
    }
    config.set("debug", "feature").set_log_level(RDKafkaLogLevel::Debug);
    let client: BaseConsumer<ProbeContext> = config.create_with_context(ProbeContext::default()).ok()?;
    // A metadata answer comes on a connection whose ApiVersions exchange is
    // done (and logged): every broker connection starts with it. rdkafka
    // hands a client's log lines over as it is polled.
    client.fetch_metadata(None, timeout).ok()?;
    for _ in 0..50 {
        if client.poll(Duration::from_millis(10)).is_none() && client.context().0.lock().ok()?.listed {
            break;
        }
    }
    let seen = client.context().0.lock().ok()?;
    seen.listed.then_some(!seen.heartbeat)
}

/// The reason a subscriber stops when its brokers lack the protocol.
pub(super) fn unsupported_reason(bootstrap: &str) -> String {
    format!(
        "group_protocol = \"consumer\", but the broker at {bootstrap} does not support the consumer group protocol (KIP-848: \
         no ConsumerGroupHeartbeat API; Kafka supports it from 4.0), so this member would never join: use group_protocol = \"classic\""
    )
}

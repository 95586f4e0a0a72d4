//! A fatal consumer error is never a healthy member (review N1): after
//! librdkafka raises one (a static member fenced by another with the same
//! instance id; under `group.protocol=consumer` an instance id still in
//! use), it drops the assignment without a rebalance callback and never
//! rejoins. The subscriber must stop, drop its partitions, say why in its
//! health, and end the app with an error (so `main!()` exits non-zero and
//! an orchestrator restarts it). The fence is the mock cluster's injected
//! heartbeat error, under both group protocols (under consumer also a full
//! group, GROUP_MAX_SIZE_REACHED).

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::{App, Error, Message, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_static_member_stops_says_why_and_ends_the_app_with_an_error() {
    use RDKafkaRespErr::*;
    for (protocol, fence) in [
        ("classic", RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID),
        ("consumer", RD_KAFKA_RESP_ERR_UNRELEASED_INSTANCE_ID),
        ("consumer", RD_KAFKA_RESP_ERR_GROUP_MAX_SIZE_REACHED),
    ] {
        let topic = format!("fatal-{protocol}-{}", fence as i32);
        let group = format!("g-{topic}");
        let cluster = cluster(&topic, 2);
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, &topic, 2, 20, 5);
        let recorder = Recorder::new();
        let r = recorder.clone();
        let sub = Subscriber::new("s", [topic.as_str()], group.as_str(), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
            }
        })
        .instance_id("pod-1");
        let app = match protocol {
            "classic" => test_app(&bootstrap),
            _ => App::new()
                .brokers(&bootstrap)
                .group_protocol(kconc_runtime::GroupProtocol::Consumer),
        };
        let running = app.subscriber(sub).start_in_test_mode().unwrap();
        let stats = running.stats_handle("s").unwrap();
        wait_for("everything handled", DEADLINE, || recorder.distinct() == 20).await;
        assert!(running.health().healthy);
        match protocol {
            "classic" => cluster
                .mock()
                .unwrap()
                .request_errors(RDKafkaApiKey::Heartbeat, &[fence]),
            // ConsumerGroupHeartbeat, which RDKafkaApiKey does not list.
            _ => cluster.request_errors_by_number(68, &[fence]),
        }
        // Health says why as soon as the poll thread knows, before its
        // consumer has closed: wait for the whole stop, then check each part.
        wait_for("the subscriber stopped", DEADLINE, || {
            !running.health().healthy && !stats.is_running()
        })
        .await;
        let health = running.health();
        let problems = health.subscribers[0].problems.join("; ");
        assert!(
            problems.contains("fatal consumer error"),
            "{protocol} {fence:?}: {problems}"
        );
        assert!(!health.ready, "{protocol} {fence:?}");
        assert!(
            stats.assigned_partitions().is_empty(),
            "{protocol} {fence:?}: its partitions are dropped"
        );
        assert!(!stats.is_running(), "{protocol} {fence:?}: its poll thread has ended");
        let ended = tokio::time::timeout(DEADLINE, running.run_until_signal())
            .await
            .expect("the app ends on its own");
        assert!(
            matches!(&ended, Err(Error::SubscriberFailed { subscriber, reason })
                if subscriber == "s" && reason.contains("fatal consumer error")),
            "{protocol}: {ended:?}"
        );
    }
}

/// Under `group_protocol = "consumer"`, a broker without the consumer group
/// protocol (no ConsumerGroupHeartbeat API: Kafka before 4.0, Tansu 0.6.0)
/// would leave the member waiting to join forever, the reason only in
/// librdkafka's debug log. The subscriber stops instead, its health names
/// the protocol and what to use, and the app ends with that error. The same
/// cluster with the API serves the same subscriber (the check is no false
/// alarm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_the_consumer_group_protocol_stops_the_subscriber_and_says_so() {
    for supported in [true, false] {
        let topic = format!("no-kip848-{supported}");
        let cluster = cluster(&topic, 2);
        if !supported {
            cluster.without_api(68);
        }
        let bootstrap = cluster.bootstrap_servers().to_owned();
        produce(&bootstrap, &topic, 2, 20, 5);
        let recorder = Recorder::new();
        let r = recorder.clone();
        let sub = Subscriber::new("s", [topic.as_str()], format!("g-{topic}"), move |m: Message| {
            let r = r.clone();
            async move {
                let _g = r.start(&m);
            }
        });
        let running = App::new()
            .brokers(&bootstrap)
            .group_protocol(kconc_runtime::GroupProtocol::Consumer)
            .subscriber(sub)
            .start_in_test_mode()
            .unwrap();
        if supported {
            wait_for("everything handled", DEADLINE, || recorder.distinct() == 20).await;
            assert!(running.health().healthy);
            running.shutdown().await;
            continue;
        }
        let stats = running.stats_handle("s").unwrap();
        wait_for("the subscriber stopped", DEADLINE, || {
            !running.health().healthy && !stats.is_running()
        })
        .await;
        let problems = running.health().subscribers[0].problems.join("; ");
        assert!(
            problems.contains("does not support the consumer group protocol")
                && problems.contains("group_protocol = \"classic\""),
            "{problems}"
        );
        assert_eq!(recorder.distinct(), 0, "it never joined, so it handled nothing");
        let ended = tokio::time::timeout(DEADLINE, running.run_until_signal())
            .await
            .expect("the app ends on its own");
        assert!(
            matches!(&ended, Err(Error::SubscriberFailed { reason, .. }) if reason.contains("KIP-848")),
            "{ended:?}"
        );
    }
}

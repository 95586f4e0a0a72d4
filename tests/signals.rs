//! SIGTERM on a running `App::run`: in-flight handlers finish, their offsets
//! are committed, and `run` returns. (Its own test binary: the signal goes to
//! the whole process.)

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use kconc_runtime::{Message, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_handlers_and_commits() {
    let (topic, group, parts, n) = ("signalled", "g-signalled", 2, 400);
    let cluster = cluster(topic, parts);
    produce(cluster.bootstrap_servers(), topic, parts, n, 20);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let rec = Recorder::new();
    let r = rec.clone();
    let sub = Subscriber::new("signalled", [topic], group, move |m: Message| {
        let r = r.clone();
        async move {
            let _g = r.start(&m);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .concurrency(8);
    let app = tokio::spawn(test_app(&bootstrap).subscriber(sub).run());
    wait_for("handlers running", Duration::from_secs(60), || {
        rec.finished() >= 8 && rec.started.load(Ordering::SeqCst) >= rec.finished() + 8
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let result = tokio::time::timeout(Duration::from_secs(30), app)
        .await
        .expect("run returns after SIGTERM");
    result.unwrap().unwrap();
    let started = rec.started.load(Ordering::SeqCst);
    assert!(started < n, "the signal came too late to test a drain");
    assert_eq!(
        rec.finished(),
        started,
        "every started handler finished before run returned"
    );
    let committed = committed(&bootstrap, group, topic, parts);
    let expected: Vec<Option<i64>> = rec.prefix(parts).into_iter().map(|o| (o > 0).then_some(o)).collect();
    assert_eq!(committed, expected, "the finished prefix is committed on SIGTERM");
}

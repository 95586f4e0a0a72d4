//! Services: state, start-up and shutdown hooks, replies, and the test
//! harness, on the embedded mock cluster through `kconc_runtime::testing`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{committed, in_test_mode, produce, wait_for};
use kconc_runtime::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use kconc_runtime::testing::{TestApp, TestMessage};
use kconc_runtime::{subscriber, App, Error, Json, Message, Setup, State};

const DEADLINE: Duration = Duration::from_secs(30);

/// A pool-like state: every clone counts into the same place.
#[derive(Clone, Default)]
struct Tally(Arc<AtomicUsize>);

#[subscriber(topic = "tallied", group = "tallied", name = "tally")]
async fn tally(State(tally): State<Tally>, _m: Message) {
    tally.0.fetch_add(1, Ordering::SeqCst);
}

/// The `tally` subscriber alone, counting into `shared`.
async fn tallied(shared: &Tally) -> kconc_runtime::testing::TestRun {
    TestApp::new()
        .only(["tally"])
        .state(shared.clone())
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_get_the_state_the_app_provides() {
    let shared = Tally::default();
    let run = tallied(&shared).await;
    for i in 0..5 {
        run.send("tallied", TestMessage::new(i.to_string())).await.unwrap();
    }
    run.wait_handled("tally", 5).await.unwrap();
    assert_eq!(
        shared.0.load(Ordering::SeqCst),
        5,
        "every handler saw the app's one tally"
    );
    run.wait_idle("tally").await.unwrap();
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_the_app_does_not_provide_fails_start_up_naming_handler_and_type() {
    let err = TestApp::new().only(["tally"]).start().await.unwrap_err();
    assert!(matches!(err, Error::MissingState { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid configuration: subscriber `tally` takes `State<services::Tally>`, but the app provides no \
         `services::Tally`: give it with main!(state = ..), App::state(..) or TestApp::state(..)"
    );
    // A state built by a start-up hook counts as provided.
    let run = TestApp::new()
        .only(["tally"])
        .app(|app| app.state_from(|_: Setup| async { Ok::<_, std::io::Error>(Tally::default()) }))
        .start()
        .await
        .unwrap();
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_up_hook_fails_start_up_and_nothing_is_consumed() {
    let (topic, group) = ("tallied", "tallied");
    let cluster = common::cluster(topic, 1);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    produce(&bootstrap, topic, 1, 3, 1);
    let tally = Tally::default();
    let hook_ran = Arc::new(AtomicBool::new(false));
    let ran = hook_ran.clone();
    let app = common::test_app(&bootstrap)
        .subscriber(
            kconc_runtime::testing::registered()
                .into_iter()
                .find(|s| s.name() == "tally")
                .unwrap(),
        )
        .state(tally.clone())
        .on_start(move |setup: Setup| async move {
            ran.store(true, Ordering::SeqCst);
            assert_eq!(setup.bootstrap_servers(), bootstrap);
            Err::<(), _>(std::io::Error::other("cannot reach the ledger"))
        });
    let err = app.launch().await.unwrap_err();
    assert!(hook_ran.load(Ordering::SeqCst));
    assert_eq!(err.to_string(), "start-up hook failed: cannot reach the ledger");
    assert_eq!(tally.0.load(Ordering::SeqCst), 0, "nothing was handled");
    assert_eq!(
        committed(cluster.bootstrap_servers(), group, topic, 1),
        vec![None],
        "nothing was committed"
    );
    // App::start cannot await a hook: it says so instead of skipping it.
    let err = App::new()
        .brokers("embedded")
        .on_start(|_: Setup| async { Ok::<(), std::io::Error>(()) })
        .subscriber(kconc_runtime::Subscriber::new("s", ["t"], "g", |_m: Message| async {}))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("App::launch().await"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_hook_runs_after_the_final_commit() {
    let seen: Arc<Mutex<Option<Vec<Option<i64>>>>> = Arc::default();
    let at_stop = seen.clone();
    let run = TestApp::new()
        .only(["tally"])
        .state(Tally::default())
        .app(move |app| {
            app.on_stop(move |setup: Setup| async move {
                // What the group has committed when the hook runs.
                let c = kconc_runtime::testing::committed_offsets(setup.bootstrap_servers(), "tallied", "tallied", 1)
                    .unwrap();
                *at_stop.lock().unwrap() = Some(c);
                Ok::<(), std::io::Error>(())
            })
        })
        .start()
        .await
        .unwrap();
    for i in 0..7 {
        run.send("tallied", TestMessage::new(i.to_string())).await.unwrap();
    }
    run.wait_handled("tally", 7).await.unwrap();
    // Stopped at once: the commit of the last messages is the final one.
    run.stop().await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(vec![Some(7)]),
        "the hook saw the final commit"
    );
}

/// Lets its handlers finish only once opened.
#[derive(Clone, Default)]
struct Gate(Arc<AtomicBool>);

#[subscriber(
    topic = "questions",
    group = "answerer",
    name = "answerer",
    reply = "answers",
    concurrency = 4,
    retries = 1000,
    backoff = "50ms",
    max_backoff = "100ms"
)]
async fn answer(State(gate): State<Gate>, Json(n): Json<u64>) -> Json<u64> {
    while !gate.0.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Json(n * 10)
}

/// Replies whose acknowledgement takes longer than `handler_timeout`.
#[subscriber(
    topic = "slow-acks",
    group = "slow-acker",
    name = "slow-acker",
    reply = "slow-acks.out",
    dead_letter = "slow-acks.dlq",
    handler_timeout = "300ms",
    retries = 0
)]
async fn slow_acker(State(gate): State<Gate>, Json(n): Json<u64>) -> Json<u64> {
    while !gate.0.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Json(n)
}

/// A `handler_timeout` that runs out while the handler's reply waits for
/// the broker's acknowledgement says so, instead of blaming the handler (a
/// new user's trial of a6d8e9a, bug 3: "the handler ran longer than
/// handler_timeout" for a handler of 20 ms whose reply was never
/// acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_spent_waiting_for_a_replys_acknowledgement_says_so() {
    let gate = Gate::default();
    let run = TestApp::new()
        .only(["slow-acker"])
        .state(gate.clone())
        .app(in_test_mode)
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    run.send("slow-acks", TestMessage::json(&7u64)).await.unwrap();
    // Every produce fails, and is retried by librdkafka, for a while: the
    // reply's acknowledgement comes long after 300 ms.
    run.embedded().unwrap().mock().unwrap().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10],
    );
    gate.0.store(true, Ordering::SeqCst);
    let dead = run.read("slow-acks.dlq", 1).await.unwrap();
    let reason = dead[0].header_str("kconc-error").unwrap();
    assert!(
        reason.contains("did not acknowledge the reply to `slow-acks.out` within handler_timeout (300ms)"),
        "{reason}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_is_committed_only_after_its_replies_are_acknowledged() {
    let n = 10u64;
    let gate = Gate::default();
    let run = TestApp::new()
        .only(["answerer"])
        .state(gate.clone())
        // librdkafka gives up on a reply after 300 ms; kconc then fails the
        // message and retries it (the handler runs again).
        .app(|app| in_test_mode(app.property("message.timeout.ms", "300")))
        .deadline(DEADLINE)
        .start()
        .await
        .unwrap();
    for i in 0..n {
        run.send("questions", TestMessage::json(&i).key(format!("k{i}")))
            .await
            .unwrap();
    }
    // Every reply produce fails for a while, then the gate opens.
    run.embedded().unwrap().mock().unwrap().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 30],
    );
    gate.0.store(true, Ordering::SeqCst);
    // The commit is read before the counter: while no message has finished
    // (no reply acknowledged), nothing may be committed.
    wait_for("every message answered", DEADLINE, || {
        let c = run.committed("answerer").unwrap()[0].2;
        let handled = run.stats("answerer").unwrap().handled;
        if handled == 0 {
            assert_eq!(c, None, "committed {c:?} before any reply was acknowledged");
        }
        handled >= n
    })
    .await;
    let stats = run.stats("answerer").unwrap();
    assert!(stats.retried > 0, "no reply failed: the test proves nothing; {stats:?}");
    run.wait_idle("answerer").await.unwrap();
    let answers = run.read("answers", n as usize).await.unwrap();
    let mut answered: Vec<u64> = answers
        .iter()
        .map(|m| serde_json::from_slice::<u64>(m.payload().unwrap()).unwrap())
        .collect();
    answered.sort_unstable();
    answered.dedup();
    assert_eq!(
        answered,
        (0..n).map(|i| i * 10).collect::<Vec<_>>(),
        "every reply, none lost"
    );
    let first = answers.iter().find(|m| m.payload() == Some(&b"0"[..])).unwrap();
    assert_eq!(first.key(), Some(&b"k0"[..]), "keyed like its question");
    run.stop().await;
}

#[subscriber(topic = "forwarded", group = "forwarder", name = "forwarder")]
async fn forward(cx: kconc_runtime::Context, Json(n): Json<u64>) -> Result<(), kconc_runtime::BoxError> {
    let (_, offset) = cx.send_json("forwarded.out", Some(b"fwd"), &(n + 1)).await?;
    assert!(offset >= 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_send_json_waits_for_the_acknowledgement() {
    let run = TestApp::new()
        .only(["forwarder"])
        .topic("forwarded.out")
        .start()
        .await
        .unwrap();
    run.send("forwarded", TestMessage::json(&41u64)).await.unwrap();
    run.wait_handled("forwarder", 1).await.unwrap();
    // Handled means acknowledged: the message is there at once.
    let out = run.read("forwarded.out", 1).await.unwrap();
    assert_eq!((out[0].key(), out[0].payload()), (Some(&b"fwd"[..]), Some(&b"42"[..])));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_says_what_it_waited_for_and_what_it_saw() {
    let run = TestApp::new()
        .only(["tally"])
        .state(Tally::default())
        .deadline(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let err = run.wait_handled("tally", 1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "test harness: `tally`: 0 of 1 messages finished after 300ms (0 received, 0 handled, 0 failed, 0 retried, \
         0 skipped, 0 dead-lettered, 0 stopped)"
    );
    let err = run.read("tallied", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "test harness: `tallied`: 0 of 1 messages after 300ms");
    let err = run.wait_handled("nobody", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "test harness: no subscriber named `nobody` runs here");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sends_and_handles_a_thousand_messages_in_one_go() {
    let shared = Tally::default();
    let run = tallied(&shared).await;
    let started = std::time::Instant::now();
    // One at a time (each waits for its acknowledgement), then in bulk.
    for i in 0..10 {
        run.send("tallied", TestMessage::new(i.to_string()).key("one"))
            .await
            .unwrap();
    }
    let singly = started.elapsed();
    run.send_many("tallied", (10..500).map(|i| TestMessage::new(i.to_string())))
        .await
        .unwrap();
    run.send_json_many("tallied", (500..1000).map(|i| (format!("k{i}"), i)))
        .await
        .unwrap();
    run.wait_handled("tally", 1000).await.unwrap();
    let took = started.elapsed();
    assert_eq!(shared.0.load(Ordering::SeqCst), 1000);
    run.wait_idle("tally").await.unwrap();
    assert_eq!(run.committed("tally").unwrap(), [("tallied".to_owned(), 0, Some(1000))]);
    println!("10 sends one by one: {singly:?}; 1,000 sent and handled: {took:?}");
    run.stop().await;
}

/// What the `sequence` subscriber saw end, in order.
#[derive(Clone, Default)]
struct Ends(Arc<Mutex<Vec<u64>>>);

/// Every tenth message takes longer, so without ordering later ones end first.
#[subscriber(topic = "sequence", group = "sequence", name = "sequence", concurrency = 10)]
async fn sequence(State(ends): State<Ends>, Json(n): Json<u64>) {
    if n % 10 == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ends.0.lock().unwrap().push(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_changes_a_subscribers_settings_with_set() {
    let ends = Ends::default();
    let run = TestApp::new()
        .only(["sequence"])
        .state(ends.clone())
        .set("sequence.ordering", "partition")
        .start()
        .await
        .unwrap();
    run.send_json_many("sequence", (0..50u64).map(|n| ("k", n)))
        .await
        .unwrap();
    run.wait_handled("sequence", 50).await.unwrap();
    assert_eq!(
        *ends.0.lock().unwrap(),
        (0..50).collect::<Vec<u64>>(),
        "in offset order"
    );
    run.stop().await;

    // A bad setting fails start-up as a bad --set does, naming the call.
    let err = TestApp::new()
        .only(["sequence"])
        .state(Ends::default())
        .set("sequence.retries", "many")
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration: App::set(\"sequence.retries\", \"many\"): "),
        "{err}"
    );
}

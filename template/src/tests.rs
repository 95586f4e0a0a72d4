//! The service's tests: its subscribers on a fresh in-process cluster.

use kconc_runtime::testing::TestApp;
use kconc_runtime::BoxError;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_payment_is_charged_once_and_answered_in_order_per_account() -> Result<(), BoxError> {
    let run = TestApp::new().partitions(4).state(Ledger::default()).start().await?;
    let payments = (1..=200).map(|id| {
        let account = format!("acct-{}", id % 8);
        (
            account.clone(),
            Payment {
                account,
                id,
                cents: 100,
            },
        )
    });
    run.send_json_many("payments", payments).await?;
    run.wait_handled("payments", 200).await?;

    // Each account's answers come in its order, each balance 100 more: no
    // payment charged twice or out of turn.
    let answers = run.read("payments.done", 200).await?;
    let mut balances: HashMap<String, Vec<i64>> = HashMap::new();
    for m in &answers {
        let done: Done = serde_json::from_slice(m.payload().unwrap_or_default())?;
        balances.entry(m.key_str()?.to_owned()).or_default().push(done.balance);
    }
    assert_eq!(balances.len(), 8);
    for (account, seen) in &balances {
        let expected: Vec<i64> = (1..=seen.len() as i64).map(|n| n * 100).collect();
        assert_eq!(seen, &expected, "{account}");
    }
    run.wait_idle("payments").await?; // everything committed
    run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_cannot_succeed_is_dead_lettered_with_its_reason() -> Result<(), BoxError> {
    let run = TestApp::new().state(Ledger::default()).start().await?;
    let refund = Payment {
        account: "acct-1".into(),
        id: 7,
        cents: -5,
    };
    run.send_json("payments", "acct-1", &refund).await?;
    let stats = run.wait_handled("payments", 1).await?;
    assert_eq!((stats.dead_lettered, stats.retried), (1, 0), "not retried");
    let dead = run.read("payments.dlq", 1).await?;
    assert_eq!(
        dead[0].header_str("kconc-error"),
        Some("payment 7 has a non-positive amount -5")
    );
    assert_eq!(dead[0].key(), Some(&b"acct-1"[..]));
    run.stop().await;
    Ok(())
}

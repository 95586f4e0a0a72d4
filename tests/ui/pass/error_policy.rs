use kconc_runtime::{subscriber, Json, Meta, NonRetryable};

#[derive(serde::Deserialize)]
struct Payment {
    cents: i64,
}

// Up to 3 retries 100 ms, 200 ms, 400 ms apart (with jitter), then the
// message goes to `payments.dlq`; a negative amount skips the retries.
#[subscriber(
    topic = "payments",
    group = "ledger",
    retries = 3,
    backoff = "100ms",
    max_backoff = "5s",
    dead_letter = "payments.dlq"
)]
async fn pay(payment: Json<Payment>, meta: Meta) -> anyhow::Result<()> {
    if payment.cents < 0 {
        return Err(NonRetryable::new(format!("negative amount at attempt {}", meta.attempt)).into());
    }
    Ok(())
}

#[subscriber(topic = "ledger", group = "ledger-audit", on_error = "stop", ordering = "partition")]
async fn audit(_entry: kconc_runtime::Message) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

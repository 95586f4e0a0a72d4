use kconc_runtime::{subscriber, Message};

#[subscriber(
    topics = ["orders", "refunds"],
    group = "billing",
    concurrency = 20,
    ordering = "unordered",
    first_poll = "worker",
    group_protocol = "consumer",
    max_uncommitted = 5000,
    handler_timeout = "30s",
    commit_batch_size = 500,
    commit_interval = "250ms",
    shutdown_timeout = "1m",
    name = "billing",
)]
async fn bill(_order: Message) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}

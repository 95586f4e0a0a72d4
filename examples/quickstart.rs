//! The kconc quickstart: one handler, 20 at a time, offsets committed safely.
//!
//! Run with:
//!
//! ```text
//! cargo run --example quickstart                             # embedded broker: produces 2,000 messages, consumes them, checks, exits
//! cargo run --example quickstart -- --brokers localhost:9092 # a real cluster: consumes topic `quickstart` until Ctrl-C
//! ```
//!
//! On the embedded broker (librdkafka's in-process mock cluster) it produces
//! 2,000 demo messages itself, consumes them with a handler that sleeps a
//! random 5-50 ms, and exits when done, printing how many were processed, how
//! long it took, and whether the committed offsets equal the partition ends.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kconc_runtime::testing::TestProducer;
use kconc_runtime::{init_tracing_with, subscriber, App, Cli, Message, EMBEDDED};

const TOPIC: &str = "quickstart";
const GROUP: &str = "quickstart";
const DEMO_MESSAGES: usize = 2_000;
const PARTITIONS: i32 = 4;

static HANDLED: AtomicUsize = AtomicUsize::new(0);

/// The handler: pretends to do 5-50 ms of I/O per message.
#[subscriber(topic = "quickstart", group = "quickstart", concurrency = 20)]
async fn handle(msg: Message) -> Result<(), std::io::Error> {
    let work = Duration::from_millis(rand::random_range(5..=50));
    tokio::time::sleep(work).await;
    if msg.offset() % 500 == 0 {
        tracing::info!(partition = msg.partition(), offset = msg.offset(), "handled");
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::from_args_with_default_brokers(Some(EMBEDDED));
    if let Err(e) = init_tracing_with(cli.log.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let app = App::from_registry().default_brokers(EMBEDDED).configure(&cli);
    if cli.list {
        return match app.listing() {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Brokers from --brokers, KCONC_BROKERS or a --config file all count.
    let demo = app.brokers_in_use() == EMBEDDED;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if demo {
        runtime.block_on(run_demo(app))
    } else {
        runtime.block_on(app.run()).map_err(|e| e.to_string())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(app: App) -> Result<(), String> {
    // The demo checks exactly these partitions, whatever the flags say.
    let app = app.embedded_partitions(PARTITIONS);
    let running = app.start().map_err(|e| e.to_string())?;
    let bootstrap = running.bootstrap_servers().to_owned();
    let ends = produce(&bootstrap)?;

    let started = Instant::now();
    let deadline = Duration::from_secs(120);
    while HANDLED.load(Ordering::Relaxed) < DEMO_MESSAGES {
        if started.elapsed() > deadline {
            return Err(format!(
                "only {} of {DEMO_MESSAGES} messages handled after {deadline:?}",
                HANDLED.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let stats = running.total_stats();
    let cluster = running.shutdown().await.ok_or("the embedded cluster is gone")?;
    let committed = cluster
        .committed_offsets(GROUP, TOPIC, PARTITIONS)
        .map_err(|e| e.to_string())?;

    let handled = HANDLED.load(Ordering::Relaxed);
    println!();
    println!(
        "processed {handled} messages in {:.2} s ({:.0} msg/s) with concurrency 20",
        took.as_secs_f64(),
        handled as f64 / took.as_secs_f64()
    );
    println!("offset commits: {} (failed: {})", stats.commits, stats.commit_failures);
    println!("partition  end  committed");
    let mut all_equal = true;
    for (p, (end, c)) in ends.iter().zip(&committed).enumerate() {
        let c_text = c.map_or("none".to_owned(), |c| c.to_string());
        println!("{p:>9}  {end:>4}  {c_text:>9}");
        all_equal &= *c == Some(*end);
    }
    if all_equal && handled == DEMO_MESSAGES {
        println!("OK: every message processed, committed offsets equal the partition ends");
        Ok(())
    } else {
        Err("committed offsets do not equal the partition ends".into())
    }
}

/// Produces the demo messages round-robin over the partitions and returns
/// each partition's end offset.
fn produce(bootstrap: &str) -> Result<Vec<i64>, String> {
    let producer = TestProducer::new(bootstrap).map_err(|e| e.to_string())?;
    for i in 0..DEMO_MESSAGES {
        let (key, payload) = (format!("user-{}", i % 100), format!("{{\"order\":{i}}}"));
        let partition = (i % PARTITIONS as usize) as i32;
        producer
            .send(TOPIC, Some(partition), Some(key.as_bytes()), payload.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let delivered = producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    Ok((0..PARTITIONS)
        .map(|p| delivered.get(&(TOPIC.to_owned(), p)).copied().unwrap_or(0))
        .collect())
}

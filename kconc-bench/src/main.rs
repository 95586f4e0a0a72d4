//! Throughput of kconc next to a hand-written rdkafka loop, in one run, on
//! the embedded (in-process mock) cluster or a real one.
//!
//! Run with: `cargo run --release -p kconc-bench` (add `-- --smoke` for a
//! seconds-long check, `-- --brokers HOST:PORT` for a real cluster).
//!
//! Workloads (topic of 8 partitions, keys `k{i % 1000}`, ~220-byte JSON):
//! - W-noop: the handler decodes the JSON and returns; baseline: a raw
//!   `BaseConsumer` loop that decodes the same JSON and stores offsets.
//! - W-io: the handler awaits a 10 ms timer; bound: `concurrency / 10 ms`.
//! - W-key: W-io with `ordering = key` over 1,000 keys; baseline: W-io
//!   (unordered) at the same concurrency, in the same run.
//! - W-key-100: `ordering = key`, 100 keys, concurrency 100, 5 ms handler;
//!   bound: `min(keys, concurrency) / 5 ms` = 20,000 msg/s.
//! - W-partition: `ordering = partition`, 10 ms handler; bound:
//!   `partitions / 10 ms` = 800 msg/s.
//!
//! `--only NAME[,NAME..]` runs some of them: noop, io, key, key100, partition.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::consumer::{BaseConsumer, Consumer as _};
use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use kconc_runtime::rdkafka::{ClientConfig, Message as _};
use kconc_runtime::{App, EmbeddedCluster, Message, Ordering as Mode, Subscriber};

const PARTITIONS: i32 = 8;

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    customer: String,
    sku: String,
    quantity: u32,
    price_cents: u64,
    currency: String,
    note: String,
}

struct Options {
    brokers: Option<String>,
    noop_messages: usize,
    io_messages: usize,
    runs: usize,
    io_concurrency: Vec<usize>,
    key100_messages: usize,
    partition_messages: usize,
    only: Vec<String>,
}

impl Options {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

const WORKLOADS: &[&str] = &["noop", "io", "key", "key100", "partition"];

fn options() -> Result<Options, String> {
    let mut o = Options {
        brokers: None,
        // librdkafka's mock cluster keeps at most 5 MB or 100,000 records per
        // partition and silently trims the oldest: 200,000 of these records
        // over 8 partitions would exceed it, so the default stays below.
        noop_messages: 100_000,
        io_messages: 20_000,
        runs: 3,
        io_concurrency: vec![10, 100, 1_000],
        key100_messages: 40_000,
        partition_messages: 2_400,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => {
                o.noop_messages = 2_000;
                o.io_messages = 500;
                o.runs = 1;
                o.io_concurrency = vec![100];
                o.key100_messages = 1_000;
                o.partition_messages = 200;
            }
            "--only" => {
                let v = args.next().ok_or("--only needs a value")?;
                for w in v.split(',') {
                    if !WORKLOADS.contains(&w) {
                        return Err(format!(
                            "--only: unknown workload `{w}` (one of {})",
                            WORKLOADS.join(", ")
                        ));
                    }
                    o.only.push(w.to_owned());
                }
            }
            "--brokers" => o.brokers = Some(args.next().ok_or("--brokers needs a value")?),
            "--runs" => {
                o.runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--runs needs a number")?
            }
            "--messages" => {
                o.noop_messages = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--messages needs a number")?;
            }
            "--help" | "-h" => {
                println!(
                    "usage: kconc-bench [--smoke] [--brokers HOST:PORT] [--runs N] [--messages N] [--only {}]",
                    WORKLOADS.join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(o)
}

fn payload(i: usize) -> String {
    let order = Order {
        id: i as u64,
        customer: format!("customer-{:06}", i % 50_000),
        sku: format!("SKU-{:08}", i % 9_973),
        quantity: (i % 7) as u32 + 1,
        price_cents: (i as u64 * 37) % 100_000,
        currency: "EUR".into(),
        note: "deliver to the back door, ring twice, leave with the neighbour if nobody answers".into(),
    };
    serde_json::to_string(&order).unwrap_or_default()
}

fn produce(bootstrap: &str, topic: &str, n: usize, keys: usize) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        let (key, value) = (format!("k{}", i % keys), payload(i));
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition((i % PARTITIONS as usize) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(|e| e.to_string())
}

/// Messages per second of a raw rdkafka loop reading `n` messages.
fn raw_loop(bootstrap: &str, topic: &str, group: &str, n: usize) -> Result<f64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let mut seen = 0;
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < n {
        if Instant::now() > deadline {
            return Err(format!("raw loop: only {seen} of {n} messages"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                start.get_or_insert_with(Instant::now);
                let order: Result<Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
                std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
                let _ = consumer.store_offset_from_message(&m);
                seen += 1;
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    let took = start.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(n as f64 / took.as_secs_f64())
}

/// What one kconc run measured.
struct Measured {
    rate: f64,
    commits: u64,
    max_waiting: u64,
    /// Mean time a handler took, as the handler measured it.
    latency: Duration,
}

impl Measured {
    /// The Little's-law bound with the handler's measured latency instead
    /// of the nominal one (tokio's timer rounds sleeps up).
    fn measured_bound(&self, concurrency: usize) -> f64 {
        concurrency as f64 / self.latency.as_secs_f64().max(1e-9)
    }
}

/// Messages per second of kconc reading `n` messages with `concurrency` and
/// `ordering`, the handler sleeping `work` (or only decoding when zero).
async fn framework(
    bootstrap: &str,
    topic: &str,
    group: String,
    n: usize,
    (concurrency, ordering): (usize, Mode),
    work: Duration,
) -> Result<Measured, String> {
    let count = Arc::new(AtomicUsize::new(0));
    let busy_ns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let b = busy_ns.clone();
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let (c, f) = (count.clone(), first.clone());
    let sub = Subscriber::new("bench", [topic], group, move |m: Message| {
        let (c, f, b) = (c.clone(), f.clone(), b.clone());
        async move {
            f.get_or_init(Instant::now);
            let started = Instant::now();
            let order: Result<Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
            std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            b.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            c.fetch_add(1, Ordering::Relaxed);
        }
    })
    .concurrency(concurrency)
    .ordering(ordering);
    let running = App::new()
        .brokers(bootstrap)
        .subscriber(sub)
        .start()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!("kconc: only {} of {n} messages", count.load(Ordering::Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = first.get().map_or(Duration::ZERO, Instant::elapsed);
    let stats = running.total_stats();
    running.shutdown().await;
    Ok(Measured {
        rate: n as f64 / took.as_secs_f64(),
        commits: stats.commits,
        max_waiting: stats.max_waiting,
        latency: Duration::from_nanos(busy_ns.load(Ordering::Relaxed) / n.max(1) as u64),
    })
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let o = options()?;
    let cluster;
    let bootstrap = match &o.brokers {
        Some(b) => b.clone(),
        None => {
            cluster = EmbeddedCluster::start(1).map_err(|e| e.to_string())?;
            cluster
                .create_topic("bench-noop", PARTITIONS)
                .map_err(|e| e.to_string())?;
            for topic in ["bench-io", "bench-key100"] {
                cluster.create_topic(topic, PARTITIONS).map_err(|e| e.to_string())?;
            }
            cluster.bootstrap_servers().to_owned()
        }
    };
    let where_ = o.brokers.as_deref().unwrap_or("embedded mock cluster");
    println!("kconc-bench on {where_}, {} run(s) each, median (min-max)", o.runs);
    produce(&bootstrap, "bench-noop", o.noop_messages, 1_000)?;
    produce(&bootstrap, "bench-io", o.io_messages, 1_000)?;
    produce(&bootstrap, "bench-key100", o.key100_messages, 100)?;

    if o.wants("noop") {
        let mut raw = Vec::new();
        let mut fw = Vec::new();
        let mut commits = 0;
        for run in 0..o.runs {
            raw.push(tokio::task::block_in_place(|| {
                raw_loop(&bootstrap, "bench-noop", &format!("raw-{run}"), o.noop_messages)
            })?);
            let m = framework(
                &bootstrap,
                "bench-noop",
                format!("fw-{run}"),
                o.noop_messages,
                (100, Mode::Unordered),
                Duration::ZERO,
            )
            .await?;
            fw.push(m.rate);
            commits = m.commits;
        }
        let (r, rmin, rmax) = median(raw);
        let (f, fmin, fmax) = median(fw);
        println!(
            "W-noop       {:>6} msgs  raw rdkafka loop        {r:>9.0} msg/s ({rmin:.0}-{rmax:.0})",
            o.noop_messages
        );
        println!(
            "W-noop       {:>6} msgs  kconc c=100             {f:>9.0} msg/s ({fmin:.0}-{fmax:.0})  ratio {:.2} of raw  commits {commits}",
            o.noop_messages,
            f / r
        );
    }
    for &c in &o.io_concurrency {
        let bound = c as f64 / 0.010;
        let mut unordered = None;
        for (workload, ordering) in [("io", Mode::Unordered), ("key", Mode::Key)] {
            if !o.wants(workload) {
                continue;
            }
            let (rate, lo, hi, last) = series(&o, |run| {
                framework(
                    &bootstrap,
                    "bench-io",
                    format!("{workload}-{c}-{run}"),
                    o.io_messages,
                    (c, ordering),
                    Duration::from_millis(10),
                )
            })
            .await?;
            let label = if ordering == Mode::Key {
                "W-key 1000k "
            } else {
                "W-io        "
            };
            let vs_unordered =
                unordered.map_or(String::new(), |u: f64| format!("  ratio {:.2} of unordered", rate / u));
            println!(
                "{label} {:>6} msgs  kconc c={c:<5} {ordering:<9}  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}{vs_unordered}  commits {}  max_waiting {}  handler {:.2} ms: ratio {:.2} of measured bound",
                o.io_messages,
                rate / bound,
                last.commits,
                last.max_waiting,
                last.latency.as_secs_f64() * 1e3,
                rate / last.measured_bound(c),
            );
            if ordering == Mode::Unordered {
                unordered = Some(rate);
            }
        }
    }
    if o.wants("key100") {
        // The same run unordered shows what the 5 ms timer itself allows
        // (tokio's timer rounds up to whole milliseconds).
        let bound = 100.0 / 0.005;
        let mut unordered = 0.0;
        for mode in [Mode::Unordered, Mode::Key] {
            let (rate, lo, hi, last) = series(&o, |run| {
                framework(
                    &bootstrap,
                    "bench-key100",
                    format!("key100-{mode}-{run}"),
                    o.key100_messages,
                    (100, mode),
                    Duration::from_millis(5),
                )
            })
            .await?;
            let vs = if mode == Mode::Key {
                format!("  ratio {:.2} of unordered", rate / unordered)
            } else {
                unordered = rate;
                String::new()
            };
            println!(
                "W-key-100    {:>6} msgs  kconc c=100   {mode:<9}  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}{vs}  commits {}  max_waiting {}  handler {:.2} ms: ratio {:.2} of measured bound",
                o.key100_messages,
                rate / bound,
                last.commits,
                last.max_waiting,
                last.latency.as_secs_f64() * 1e3,
                rate / last.measured_bound(100),
            );
        }
    }
    if o.wants("partition") {
        let bound = f64::from(PARTITIONS) / 0.010;
        let (rate, lo, hi, last) = series(&o, |run| {
            framework(
                &bootstrap,
                "bench-io",
                format!("partition-{run}"),
                o.partition_messages,
                (100, Mode::Partition),
                Duration::from_millis(10),
            )
        })
        .await?;
        println!(
            "W-partition  {:>6} msgs  kconc c=100   partition  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}  commits {}  max_waiting {}  handler {:.2} ms: ratio {:.2} of measured bound",
            o.partition_messages,
            rate / bound,
            last.commits,
            last.max_waiting,
            last.latency.as_secs_f64() * 1e3,
            rate / last.measured_bound(PARTITIONS as usize),
        );
    }
    Ok(())
}

/// Runs a workload `o.runs` times: median rate, min, max, and the last run.
async fn series<F, Fut>(o: &Options, mut one: F) -> Result<(f64, f64, f64, Measured), String>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Measured, String>>,
{
    let mut rates = Vec::new();
    let mut last = None;
    for run in 0..o.runs {
        let m = one(run).await?;
        rates.push(m.rate);
        last = Some(m);
    }
    let (m, lo, hi) = median(rates);
    let last = last.ok_or("no runs")?;
    Ok((m, lo, hi, last))
}

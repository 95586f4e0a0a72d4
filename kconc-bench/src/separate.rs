//! `--separate`: W-noop with each consumer in its own process, so that its
//! peak RSS and its CPU are its own (not the embedded broker's, which stays
//! in the parent), and the requests it sends the broker, by type, from
//! librdkafka's statistics.
//!
//! The parent produces once and runs `kconc-bench --child raw|kconc ..`
//! alternately; each child consumes every message and prints one line:
//! `CHILD rate=.. cpu_s=.. switches=.. rss_mb=.. req=Fetch:n,OffsetCommit:n,..`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use kconc_runtime::rdkafka::ClientContext;
use kconc_runtime::OrderingMode;

use super::{framework_with, median, peak_rss_mb, produce, raw_config, RawRun};

use std::future::Future as _;

/// How often librdkafka reports its statistics in a child, in ms:
/// `KCONC_BENCH_STATS_MS` or 100 (a profiler's run sets it longer, so that
/// building the reports does not swamp the profile).
fn stats_every_ms() -> u64 {
    std::env::var("KCONC_BENCH_STATS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// What a child prints.
#[derive(Debug, Default, Clone)]
struct ChildReport {
    rate: f64,
    cpu_s: f64,
    /// Context switches over the timed window.
    switches: u64,
    rss_mb: f64,
    requests: BTreeMap<String, u64>,
}

/// The request counts of one statistics JSON: `brokers.*.req`, summed over
/// every broker entry (the group coordinator's included).
fn requests(stats_json: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(stats_json) else {
        return out;
    };
    if let Some(brokers) = v.get("brokers").and_then(|b| b.as_object()) {
        for broker in brokers.values() {
            if let Some(req) = broker.get("req").and_then(|r| r.as_object()) {
                for (k, n) in req {
                    *out.entry(k.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
                }
            }
        }
    }
    out.retain(|_, n| *n > 0);
    out
}

fn print_report(r: &ChildReport) {
    let req: Vec<String> = r.requests.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    println!(
        "CHILD rate={:.0} cpu_s={:.4} switches={} rss_mb={:.1} req={} allocs_total={} poll_allocs_total={}",
        r.rate,
        r.cpu_s,
        r.switches,
        r.rss_mb,
        req.join(","),
        // The whole process's, for `--gate` (which subtracts two runs).
        super::counting::ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed),
        super::counting::POLL_THREAD_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn parse_report(out: &str) -> Option<ChildReport> {
    let line = out.lines().find(|l| l.starts_with("CHILD "))?;
    let mut r = ChildReport::default();
    for part in line.split_whitespace().skip(1) {
        let (k, v) = part.split_once('=')?;
        match k {
            "rate" => r.rate = v.parse().ok()?,
            "cpu_s" => r.cpu_s = v.parse().ok()?,
            "switches" => r.switches = v.parse().ok()?,
            "rss_mb" => r.rss_mb = v.parse().ok()?,
            "req" => {
                for kv in v.split(',').filter(|s| !s.is_empty()) {
                    let (name, n) = kv.split_once(':')?;
                    r.requests.insert(name.to_owned(), n.parse().ok()?);
                }
            }
            _ => {}
        }
    }
    Some(r)
}

/// The raw loop's context: keeps librdkafka's latest statistics.
#[derive(Default)]
struct KeepStats(Mutex<Option<String>>);

impl ClientContext for KeepStats {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(String::from_utf8_lossy(statistics).into_owned());
        }
    }
}

impl ConsumerContext for KeepStats {}

impl KeepStats {
    /// The latest statistics JSON, or an empty one.
    fn latest(&self) -> String {
        self.0.lock().ok().and_then(|s| s.clone()).unwrap_or_default()
    }
}

impl ChildReport {
    /// What a child ran at `rate` msg/s, with `usage` over its timed
    /// window and librdkafka's last statistics `stats`.
    fn new(rate: f64, usage: super::Usage, stats: &str) -> Self {
        ChildReport {
            rate,
            cpu_s: usage.cpu.as_secs_f64(),
            switches: usage.switches,
            rss_mb: peak_rss_mb(),
            requests: requests(stats),
        }
    }
}

/// The raw loop in a child: decodes each message, stores its offset, and
/// commits every 100 messages (asynchronously, as a hand-written service
/// would), then reports.
fn raw_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    let mut config = raw_config(brokers, group);
    config
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", stats_every_ms().to_string());
    let consumer: BaseConsumer<KeepStats> = config
        .create_with_context(KeepStats::default())
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let mut run = RawRun::default();
    run.read(&consumer, n, Some(100))?;
    let (rate, usage) = run.finish();
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    // One more statistics report after the last request.
    let until = Instant::now() + Duration::from_millis(3 * stats_every_ms());
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(20));
    }
    Ok(ChildReport::new(rate, usage, &consumer.context().latest()))
}

/// W1's handler: decode, then await a 10 ms timer, at concurrency 100.
const W1_WORK: Duration = Duration::from_millis(10);

/// The raw spawn-and-semaphore loop in a child (W1): a tokio service
/// without kconc reads from a `StreamConsumer`, takes one of 100 permits,
/// spawns the handler (decode, a 10 ms timer) and stores its offset when it
/// ends; librdkafka commits the stored offsets every 5 s. (It can skip a
/// message on a crash: an offset stored out of order covers one still
/// running. That is the loop kconc replaces; here it is the baseline of the
/// broker's work.)
async fn raw_spawn_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    use kconc_runtime::rdkafka::consumer::StreamConsumer;
    use kconc_runtime::rdkafka::Message as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut config = raw_config(brokers, group);
    config.set("statistics.interval.ms", stats_every_ms().to_string());
    let consumer: Arc<StreamConsumer<KeepStats>> = Arc::new(
        config
            .create_with_context(KeepStats::default())
            .map_err(|e| e.to_string())?,
    );
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let permits = Arc::new(tokio::sync::Semaphore::new(100));
    let done = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(tokio::sync::Notify::new());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut start = None;
    let mut read = 0;
    while read < n {
        let m = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .map_err(|_| format!("raw spawn loop: only {read} of {n} messages"))?
            .map_err(|e| e.to_string())?;
        start.get_or_insert_with(|| (Instant::now(), super::Usage::now()));
        let permit = permits.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let payload = m.payload().unwrap_or_default().to_vec();
        let (partition, offset) = (m.partition(), m.offset());
        drop(m);
        read += 1;
        let (consumer, done, ended, topic) = (consumer.clone(), done.clone(), ended.clone(), topic.to_owned());
        tokio::spawn(async move {
            let order: Result<super::Order, _> = serde_json::from_slice(&payload);
            std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
            tokio::time::sleep(W1_WORK).await;
            let _ = consumer.store_offset(&topic, partition, offset);
            drop(permit);
            if done.fetch_add(1, Ordering::Relaxed) + 1 == n {
                ended.notify_one();
            }
        });
    }
    while done.load(Ordering::Relaxed) < n {
        let _ = tokio::time::timeout(Duration::from_millis(100), ended.notified()).await;
        if Instant::now() > deadline {
            return Err(format!(
                "raw spawn loop: only {} of {n} handled",
                done.load(Ordering::Relaxed)
            ));
        }
    }
    let (took, usage) = start.map_or((Duration::ZERO, super::Usage::default()), |(t, u)| {
        (t.elapsed(), super::Usage::now().since(u))
    });
    // A `StreamConsumer` hands over statistics only while it is read: its
    // last report is from before this commit, which the requests leave out
    // (the broker's CPU, measured from outside, includes it).
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        eprintln!("raw spawn loop: final commit: {e}");
    }
    let rate = n as f64 / took.as_secs_f64().max(1e-9);
    Ok(ChildReport::new(rate, usage, &consumer.context().latest()))
}

/// kconc in a child: the W-noop handler at concurrency 100 (or W1's, with
/// `work` of 10 ms).
async fn kconc_child(brokers: &str, topic: &str, group: &str, n: usize, work: Duration) -> Result<ChildReport, String> {
    let every = Duration::from_millis(stats_every_ms());
    let m = framework_with(
        brokers,
        topic,
        group.to_owned(),
        n,
        (100, OrderingMode::Unordered),
        work,
        Some(every),
    )
    .await?;
    Ok(ChildReport::new(
        m.rate,
        m.usage,
        &m.librdkafka_statistics.unwrap_or_default(),
    ))
}

/// `--child raw|kconc BROKERS TOPIC GROUP N`: runs one and prints its report.
pub(crate) async fn child(args: &[String]) -> Result<(), String> {
    let [kind, brokers, topic, group, n] = args else {
        return Err(
            "--child needs: raw|kconc|kconc-json|raw-spawn|kconc-w1|exit|exit-raw BROKERS TOPIC GROUP N".into(),
        );
    };
    let n: usize = n.parse().map_err(|_| "--child: N is a number")?;
    let report = match kind.as_str() {
        "raw" => tokio::task::block_in_place(|| raw_child(brokers, topic, group, n))?,
        "kconc" => kconc_child(brokers, topic, group, n, Duration::ZERO).await?,
        "kconc-json" => {
            super::JSON_HANDLER.store(true, std::sync::atomic::Ordering::Relaxed);
            kconc_child(brokers, topic, group, n, Duration::ZERO).await?
        }
        "raw-spawn" => raw_spawn_child(brokers, topic, group, n).await?,
        "kconc-w1" => kconc_child(brokers, topic, group, n, W1_WORK).await?,
        "exit" => return exit_child(brokers, topic, group, n).await,
        "exit-raw" => return exit_raw_child(brokers, topic, group, n).await,
        other => {
            return Err(format!(
                "--child: `{other}` is not raw, kconc, kconc-json, raw-spawn, kconc-w1, exit or exit-raw"
            ))
        }
    };
    print_report(&report);
    Ok(())
}

fn run_child(kind: &str, brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // `KCONC_BENCH_CHILD_WRAP="perf stat -e instructions:u -o /tmp/x"`
    // runs each child under a profiler (its words split on spaces).
    let wrap = std::env::var("KCONC_BENCH_CHILD_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = command
        .args(["--child", kind, brokers, topic, group, &n.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{kind} child failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_report(&stdout).ok_or_else(|| format!("{kind} child printed no report: {stdout}"))
}

/// One kind's medians: msg/s, CPU µs per message, peak RSS MB, and
/// requests per 10,000 messages by type.
struct Medians {
    rate: f64,
    cpu: f64,
    rss: f64,
    requests: BTreeMap<String, f64>,
}

/// The parent: produces `n` messages once, runs the children `runs` times
/// taking turns (the raw loop, kconc with the W-noop handler taking the
/// `Message`, and taking `Json<Order>`; with `w1`, the raw spawn-and-
/// semaphore loop and kconc, both with W1's 10 ms handler at concurrency
/// 100), and prints their medians side by side. With `broker_pid` (an
/// external broker's process), also the CPU that process spent while each
/// child ran: the broker's work of serving it (its fetches, commits,
/// heartbeats; nothing else uses the broker then).
///
/// On an external broker the topic is a new one, holding these `n`
/// messages only: a child consumes all its topic holds (kconc's goes on
/// after its `n`th while it waits for its last statistics), so messages
/// left by earlier runs would count against it.
pub(crate) fn separate(
    brokers: &str,
    embedded: bool,
    n: usize,
    runs: usize,
    broker_pid: Option<u32>,
    w1: bool,
) -> Result<(), String> {
    let base = if w1 { "bench-separate-w1" } else { "bench-separate" };
    let topic = if embedded {
        base.to_owned()
    } else {
        let topic = format!("{base}-{}", super::low_rate::stamp());
        tokio::runtime::Handle::current().block_on(super::low_rate::create_topic(brokers, &topic))?;
        topic
    };
    let topic = topic.as_str();
    let (kinds, raw_kind): (&[&str], &str) = if w1 {
        (&["raw-spawn", "kconc-w1"], "raw-spawn")
    } else {
        (&["raw", "kconc", "kconc-json"], "raw")
    };
    produce(brokers, topic, n, 1_000)?;
    let mut reports: BTreeMap<&str, Vec<ChildReport>> = BTreeMap::new();
    let mut broker_cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        for &kind in kinds {
            let before = broker_pid.map(process_cpu_s).transpose()?;
            let r = run_child(
                kind,
                brokers,
                topic,
                &format!("sep-{kind}-{run}-{}", std::process::id()),
                n,
            )?;
            if let (Some(pid), Some(before)) = (broker_pid, before) {
                broker_cpu.entry(kind).or_default().push(process_cpu_s(pid)? - before);
            }
            reports.entry(kind).or_default().push(r);
        }
    }
    let workload = if w1 {
        "W1 (10 ms handlers, concurrency 100)"
    } else {
        "W-noop"
    };
    println!("{workload}, {n} msgs, each consumer in its own process ({runs} runs each, median (min-max)):");
    let per_10k = 10_000.0 / n as f64;
    let mut medians: BTreeMap<&str, Medians> = BTreeMap::new();
    for (kind, rs) in &reports {
        let rate = median(rs.iter().map(|r| r.rate).collect());
        let cpu = median(rs.iter().map(|r| r.cpu_s * 1e6 / n as f64).collect());
        let rss = median(rs.iter().map(|r| r.rss_mb).collect());
        let switches = median(rs.iter().map(|r| r.switches as f64 * 1_000.0 / n as f64).collect());
        let mut names: Vec<&String> = rs.iter().flat_map(|r| r.requests.keys()).collect();
        names.sort();
        names.dedup();
        let req: BTreeMap<String, f64> = names
            .into_iter()
            .map(|k| {
                let per = median(
                    rs.iter()
                        .map(|r| *r.requests.get(k).unwrap_or(&0) as f64 * per_10k)
                        .collect(),
                );
                (k.clone(), per.0)
            })
            .collect();
        println!(
            "  {kind:<10}  {:>8.0} msg/s ({:.0}-{:.0})  cpu {:.2} us/msg ({:.2}-{:.2})  peak RSS {:.1} MB ({:.1}-{:.1})  \
             context switches per 1,000 msgs {:.0} ({:.0}-{:.0})",
            rate.0, rate.1, rate.2, cpu.0, cpu.1, cpu.2, rss.0, rss.1, rss.2, switches.0, switches.1, switches.2
        );
        let req_text: Vec<String> = req.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
        println!("         requests per 10,000 msgs: {}", req_text.join(", "));
        medians.insert(
            kind,
            Medians {
                rate: rate.0,
                cpu: cpu.0,
                rss: rss.0,
                requests: req,
            },
        );
    }
    for kind in ["kconc-json", "kconc", "kconc-w1"] {
        if let (Some(raw), Some(k)) = (medians.get(raw_kind), medians.get(kind)) {
            println!(
                "  {kind} / raw: throughput {:.2}, CPU per message {:.2}, peak RSS {:.2}",
                k.rate / raw.rate,
                k.cpu / raw.cpu,
                k.rss / raw.rss
            );
        }
    }
    if !broker_cpu.is_empty() {
        let text: Vec<String> = broker_cpu
            .iter()
            .map(|(kind, v)| {
                let (m, lo, hi) = median(v.clone());
                format!("{kind} {m:.3} s ({lo:.3}-{hi:.3})")
            })
            .collect();
        println!(
            "  broker CPU per run (its process, while the child ran): {}",
            text.join(", ")
        );
        for kind in ["kconc", "kconc-json", "kconc-w1"] {
            if let (Some(raw), Some(k)) = (broker_cpu.get(raw_kind), broker_cpu.get(kind)) {
                let (raw, k) = (median(raw.clone()).0, median(k.clone()).0);
                if raw > 0.0 {
                    println!("  {kind} / {raw_kind} broker CPU: {:.2}", k / raw);
                }
            }
        }
    }
    let kconc_kind = if w1 { "kconc-w1" } else { "kconc" };
    if let (Some(raw), Some(k)) = (medians.get(raw_kind), medians.get(kconc_kind)) {
        let ratios: Vec<String> = ["Fetch", "OffsetCommit", "Heartbeat", "Metadata"]
            .iter()
            .map(|t| {
                let (r, kk) = (
                    raw.requests.get(*t).copied().unwrap_or(0.0),
                    k.requests.get(*t).copied().unwrap_or(0.0),
                );
                if r > 0.0 {
                    format!("{t} {:.2}", kk / r)
                } else {
                    format!("{t} {kk:.1} (raw 0)")
                }
            })
            .collect();
        println!("  kconc / raw requests: {}", ratios.join(", "));
    }
    Ok(())
}

/// The CPU a process has used so far (user and system), in seconds, from
/// `/proc/PID/stat` (in clock ticks of 10 ms: Linux's `USER_HZ` is 100).
fn process_cpu_s(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("--broker-pid {pid}: cannot read its /proc/{pid}/stat: {e}"))?;
    // The fields after the command's name (which may hold spaces, in
    // parentheses): utime and stime are the 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / 100.0),
        _ => Err(format!("--broker-pid {pid}: /proc/{pid}/stat has no CPU times")),
    }
}

/// How long an exit child sees no message before it counts as idle.
const QUIET_NS: u64 = 300_000_000;

/// Unix time in nanoseconds.
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `--child exit ..`: kconc as a service runs it (`run_until_signal`, which
/// `main!` uses); once every message is handled and it is idle, it prints
/// `HANDLED` and waits for the parent's SIGTERM.
async fn exit_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static LAST_NS: AtomicU64 = AtomicU64::new(0);
    let sub = kconc_runtime::Subscriber::new("bench", [topic], group, |m: kconc_runtime::Message| async move {
        let order: Result<super::Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
        std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
        COUNT.fetch_add(1, Ordering::Relaxed);
        LAST_NS.fetch_max(unix_ns(), Ordering::Relaxed);
    })
    .concurrency(100);
    if let Ok(filter) = std::env::var("KCONC_BENCH_LOG") {
        let _ = kconc_runtime::init_tracing_with(Some(&filter));
    }
    let running = kconc_runtime::App::new()
        .brokers(brokers)
        .subscriber(sub)
        .start()
        .map_err(|e| e.to_string())?;
    let mut serving = std::pin::pin!(running.run_until_signal());
    // Its first poll installs the signal handlers (before its first await),
    // so the parent's SIGTERM cannot come before them.
    let mut ended = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = serving.as_mut().poll(cx) {
            ended = Some(r);
        }
        std::task::Poll::Ready(())
    })
    .await;
    if let Some(r) = ended {
        return r.map_err(|e| e.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    // Every message handled, and none for QUIET (the topic may hold more
    // than `n` on a long-lived broker): nothing is in flight.
    while COUNT.load(Ordering::Relaxed) < n || unix_ns().saturating_sub(LAST_NS.load(Ordering::Relaxed)) < QUIET_NS {
        if Instant::now() > deadline {
            return Err(format!(
                "exit child: only {} of {n} messages",
                COUNT.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("HANDLED");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    serving.await.map_err(|e| e.to_string())
}

/// `--child exit-raw ..`: the raw loop as a service would write it: on
/// SIGTERM it commits what it handled (synchronously) and drops the
/// consumer, which leaves the group.
async fn exit_raw_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TERM: AtomicBool = AtomicBool::new(false);
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        term.recv().await;
        TERM.store(true, Ordering::SeqCst);
    });
    let brokers = brokers.to_owned();
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut config = raw_config(&brokers, &group);
        config.set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;
        let mut run = RawRun::default();
        let mut last_ns = 0;
        let mut told = false;
        while !TERM.load(Ordering::SeqCst) {
            match consumer.poll(Duration::from_millis(10)) {
                Some(Ok(m)) => {
                    run.handle(&consumer, &m);
                    last_ns = unix_ns();
                    if run.seen % 100 == 0 {
                        let _ = consumer.commit_consumer_state(CommitMode::Async);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {}
            }
            if run.seen >= n && !told && unix_ns().saturating_sub(last_ns) >= QUIET_NS {
                told = true;
                println!("HANDLED");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }
        }
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
        drop(consumer);
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Runs an exit child, sends it SIGTERM once it has handled every message
/// and is idle, and returns the time from SIGTERM to its exit, in seconds.
fn exit_run(kind: &str, brokers: &str, topic: &str, group: &str, n: usize) -> Result<f64, String> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--child", kind, brokers, topic, group, &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(if std::env::var_os("KCONC_BENCH_LOG").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("exit child: no stdout")?;
    let mut handled = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.starts_with("HANDLED") {
            handled = true;
            break;
        }
    }
    if !handled {
        return Err("exit child ended before handling every message".into());
    }
    let signalled = Instant::now();
    terminate(child.id());
    let status = child.wait().map_err(|e| e.to_string())?;
    let exited = signalled.elapsed();
    if !status.success() {
        return Err(format!("exit child: {status}"));
    }
    Ok(exited.as_secs_f64())
}

/// Sends SIGTERM to `pid`.
#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a child's pid and a valid signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// `--exit`: how long kconc, and the raw loop, take to exit on SIGTERM with
/// nothing in flight, `runs` times each, alternately; prints the medians.
pub(crate) fn exit_times(brokers: &str, n: usize, runs: usize) -> Result<(), String> {
    let topic = "bench-separate";
    produce(brokers, topic, n, 1_000)?;
    println!("exit on SIGTERM with nothing in flight, {n} msgs handled first ({runs} runs each, median (min-max)):");
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        for kind in ["exit-raw", "exit"] {
            let took = exit_run(kind, brokers, topic, &format!("{kind}-{run}-{}", std::process::id()), n)?;
            times.entry(kind).or_default().push(took);
        }
    }
    for (kind, after_signal) in times {
        let s = median(after_signal);
        let name = if kind == "exit" { "kconc" } else { "raw" };
        println!("  {name:<5}  SIGTERM to exit {:.3} s ({:.3}-{:.3})", s.0, s.1, s.2);
    }
    Ok(())
}

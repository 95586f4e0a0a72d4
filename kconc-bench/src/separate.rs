//! `--separate`: W-noop with each consumer in its own process, so that its
//! peak RSS and its CPU are its own (not the embedded broker's, which stays
//! in the parent), and the requests it sends the broker, by type, from
//! librdkafka's statistics.
//!
//! The parent produces once and runs `kconc-bench --child raw|kconc ..`
//! alternately; each child consumes every message and prints one line:
//! `CHILD rate=.. cpu_s=.. rss_mb=.. req=Fetch:n,OffsetCommit:n,..`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use kconc_runtime::rdkafka::ClientContext;
use kconc_runtime::OrderingMode;

use super::{framework_with, median, peak_rss_mb, produce, raw_config, RawRun};

/// How often librdkafka reports its statistics in a child.
const STATS_EVERY_MS: u64 = 100;

/// What a child prints.
#[derive(Debug, Default, Clone)]
struct ChildReport {
    rate: f64,
    cpu_s: f64,
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
        "CHILD rate={:.0} cpu_s={:.3} rss_mb={:.1} req={}",
        r.rate,
        r.cpu_s,
        r.rss_mb,
        req.join(",")
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

/// The raw loop in a child: decodes each message, stores its offset, and
/// commits every 100 messages (asynchronously, as a hand-written service
/// would), then reports.
fn raw_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    let mut config = raw_config(brokers, group);
    config
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", STATS_EVERY_MS.to_string());
    let consumer: BaseConsumer<KeepStats> = config
        .create_with_context(KeepStats::default())
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let mut run = RawRun::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    while run.seen < n {
        if Instant::now() > deadline {
            return Err(format!("raw child: only {} of {n} messages", run.seen));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                run.handle(&consumer, &m);
                if run.seen % 100 == 0 {
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    let (rate, usage) = run.finish();
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    // One more statistics report after the last request.
    let until = Instant::now() + Duration::from_millis(3 * STATS_EVERY_MS);
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(20));
    }
    let stats = consumer
        .context()
        .0
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_default();
    Ok(ChildReport {
        rate,
        cpu_s: usage.cpu.as_secs_f64(),
        rss_mb: peak_rss_mb(),
        requests: requests(&stats),
    })
}

/// kconc in a child: the W-noop handler at concurrency 100.
async fn kconc_child(brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    let every = Duration::from_millis(STATS_EVERY_MS);
    let m = framework_with(
        brokers,
        topic,
        group.to_owned(),
        n,
        (100, OrderingMode::Unordered),
        Duration::ZERO,
        Some(every),
    )
    .await?;
    Ok(ChildReport {
        rate: m.rate,
        cpu_s: m.usage.cpu.as_secs_f64(),
        rss_mb: peak_rss_mb(),
        requests: requests(&m.librdkafka_statistics.unwrap_or_default()),
    })
}

/// `--child raw|kconc BROKERS TOPIC GROUP N`: runs one and prints its report.
pub(crate) async fn child(args: &[String]) -> Result<(), String> {
    let [kind, brokers, topic, group, n] = args else {
        return Err("--child needs: raw|kconc BROKERS TOPIC GROUP N".into());
    };
    let n: usize = n.parse().map_err(|_| "--child: N is a number")?;
    let report = match kind.as_str() {
        "raw" => tokio::task::block_in_place(|| raw_child(brokers, topic, group, n))?,
        "kconc" => kconc_child(brokers, topic, group, n).await?,
        other => return Err(format!("--child: `{other}` is not raw or kconc")),
    };
    print_report(&report);
    Ok(())
}

fn run_child(kind: &str, brokers: &str, topic: &str, group: &str, n: usize) -> Result<ChildReport, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
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

/// The parent: produces `n` messages once, runs the two children `runs`
/// times alternately, and prints their medians side by side.
pub(crate) fn separate(brokers: &str, n: usize, runs: usize) -> Result<(), String> {
    let topic = "bench-separate";
    produce(brokers, topic, n, 1_000)?;
    let mut reports: BTreeMap<&str, Vec<ChildReport>> = BTreeMap::new();
    for run in 0..runs {
        for kind in ["raw", "kconc"] {
            let r = run_child(kind, brokers, topic, &format!("sep-{kind}-{run}"), n)?;
            reports.entry(kind).or_default().push(r);
        }
    }
    println!("W-noop, {n} msgs, each consumer in its own process ({runs} runs each, median (min-max)):");
    let per_10k = 10_000.0 / n as f64;
    let mut medians: BTreeMap<&str, Medians> = BTreeMap::new();
    for (kind, rs) in &reports {
        let rate = median(rs.iter().map(|r| r.rate).collect());
        let cpu = median(rs.iter().map(|r| r.cpu_s * 1e6 / n as f64).collect());
        let rss = median(rs.iter().map(|r| r.rss_mb).collect());
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
            "  {kind:<5}  {:>8.0} msg/s ({:.0}-{:.0})  cpu {:.2} us/msg ({:.2}-{:.2})  peak RSS {:.1} MB ({:.1}-{:.1})",
            rate.0, rate.1, rate.2, cpu.0, cpu.1, cpu.2, rss.0, rss.1, rss.2
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
    if let (Some(raw), Some(k)) = (medians.get("raw"), medians.get("kconc")) {
        println!(
            "  kconc / raw: throughput {:.2}, CPU per message {:.2}, peak RSS {:.2}",
            k.rate / raw.rate,
            k.cpu / raw.cpu,
            k.rss / raw.rss
        );
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

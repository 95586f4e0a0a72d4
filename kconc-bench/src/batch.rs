//! `--batch` (W-batch): what batch handlers buy when a call has a fixed
//! cost. The handler is a bulk write that costs 5 ms per call plus 10 µs
//! per message (`sleep(5 ms + 10 µs * n)`), at concurrency 4, unordered,
//! with `max_batch` 1, 10, 100 and 500, next to the single-message handler
//! (`sleep(5 ms + 10 µs)` per message, no batch machinery) at the same
//! concurrency. Each configuration reads a topic of its own (8 partitions)
//! from the start, in a group of its own, once.
//!
//! Per configuration it prints msg/s from the first call to the last
//! message handled, the bound `concurrency * n / (5 ms + 10 µs * n)` with
//! `n` the mean batch size seen (`handled / batches`), the ratio to it, the
//! speed-up over the single-message handler, the mean batch size, the CPU
//! of the whole process (broker included) per message, the mean time of a
//! call as the handler measured it (tokio's timer rounds sleeps up to the
//! millisecond) and how long after the last message every offset was
//! committed. Figures only, nothing is asserted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kconc_runtime::{App, Handler, Message, Subscriber};

use crate::{Order, Usage};

const CONCURRENCY: usize = 4;
/// What a call costs whatever its size.
const PER_CALL: Duration = Duration::from_millis(5);
/// What each message of a call adds.
const PER_MESSAGE: Duration = Duration::from_micros(10);

/// The configurations: label (also the topic's suffix), `max_batch` (none:
/// the single-message handler) and messages, so that each takes about
/// 1-5 s. The mock cluster keeps at most 5 MB per partition: 120,000 of
/// the bench's records over 8 partitions stay below it.
const RUNS: &[(&str, Option<usize>, usize)] = &[
    ("single", None, 2_000),
    ("1", Some(1), 2_000),
    ("10", Some(10), 20_000),
    ("100", Some(100), 120_000),
    ("500", Some(500), 120_000),
];

/// The topics `--batch` reads on the embedded cluster (its caller creates
/// them with the others).
pub(crate) fn topics() -> impl Iterator<Item = String> {
    RUNS.iter().map(|(label, _, _)| format!("bench-batch-{label}"))
}

/// What a call of `n` messages costs.
fn cost(n: usize) -> Duration {
    PER_CALL + PER_MESSAGE * n as u32
}

/// What the handlers report: when the first call began, and the calls'
/// time as they measured it.
#[derive(Default)]
struct Probe {
    first: OnceLock<(Instant, Usage)>,
    calls: AtomicU64,
    busy_ns: AtomicU64,
}

impl Probe {
    /// Decodes each message (building the rows of the write) and waits
    /// the write's time.
    async fn write(&self, messages: &[Message]) {
        self.first.get_or_init(|| (Instant::now(), Usage::now()));
        let started = Instant::now();
        for m in messages {
            let order: Result<Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
            std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
        }
        tokio::time::sleep(cost(messages.len())).await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What one configuration measured.
struct Measured {
    rate: f64,
    /// `handled / batches` (1 for the single-message handler).
    mean_batch: f64,
    cpu_per_message: Duration,
    /// The mean time of a call, as the handler measured it.
    call: Duration,
    /// From the last message handled to every offset committed.
    commit_lag: Duration,
}

pub(crate) async fn run(bootstrap: &str, embedded: bool, svg: Option<&str>) -> Result<(), String> {
    let stamp = crate::low_rate::stamp();
    let mut rows = Vec::new();
    println!(
        "W-batch: handler sleeps 5 ms + 10 us per message of a call, concurrency {CONCURRENCY}, unordered, one run each; bound = concurrency * n / (5 ms + 10 us * n), n = mean batch size seen"
    );
    let mut single_rate = None;
    for &(label, max_batch, n) in RUNS {
        let topic = if embedded {
            format!("bench-batch-{label}")
        } else {
            let topic = format!("bench-batch-{label}-{stamp}");
            crate::low_rate::create_topic(bootstrap, &topic).await?;
            topic
        };
        tokio::task::block_in_place(|| crate::produce(bootstrap, &topic, n, 1_000))?;
        let m = measure(bootstrap, &topic, &format!("bench-batch-{label}-{stamp}"), n, max_batch).await?;
        let bound =
            CONCURRENCY as f64 * m.mean_batch / PER_MESSAGE.as_secs_f64().mul_add(m.mean_batch, PER_CALL.as_secs_f64());
        let measured_bound = CONCURRENCY as f64 * m.mean_batch / m.call.as_secs_f64().max(1e-9);
        let single = *single_rate.get_or_insert(m.rate);
        let name = match max_batch {
            Some(b) => format!("max_batch={b}"),
            None => "single-message".to_owned(),
        };
        println!(
            "W-batch      {n:>6} msgs  kconc c={CONCURRENCY} {name:<14}  {:>9.0} msg/s  bound {bound:>7.0}  ratio {:.2} of bound  speed-up {:>6.1}x over single-message  mean batch {:>5.1}  cpu {:.2} us/msg  call {:.2} ms: ratio {:.2} of measured bound  all committed {:.2} s after the last",
            m.rate,
            m.rate / bound,
            m.rate / single,
            m.mean_batch,
            m.cpu_per_message.as_secs_f64() * 1e6,
            m.call.as_secs_f64() * 1e3,
            m.rate / measured_bound,
            m.commit_lag.as_secs_f64(),
        );
        rows.push((name, m.rate, bound));
    }
    if let Some(path) = svg {
        std::fs::write(path, chart(&rows)).map_err(|e| format!("{path}: {e}"))?;
        println!("chart written to {path}");
    }
    Ok(())
}

/// A bar per configuration (msg/s, log scale) with its bound marked.
fn chart(rows: &[(String, f64, f64)]) -> String {
    let (w, h, left, top, bottom) = (640.0, 320.0, 70.0, 40.0, 60.0);
    let plot_h = h - top - bottom;
    let max = rows.iter().map(|r| r.2.max(r.1)).fold(1.0_f64, f64::max);
    let decades = max.log10().ceil().max(1.0);
    let y = |v: f64| top + plot_h * (1.0 - v.max(1.0).log10() / decades);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">W-batch: msg/s (log) by batch size; handler 5 ms + 10 us per message, concurrency {CONCURRENCY}</text>\n"
    );
    for d in 0..=decades as u32 {
        let v = 10_f64.powi(d as i32);
        let yy = y(v);
        out += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            w - 10.0,
            left - 6.0,
            yy + 4.0
        );
    }
    let slot = (w - left - 10.0) / rows.len().max(1) as f64;
    for (i, (name, rate, bound)) in rows.iter().enumerate() {
        let x = left + slot * i as f64 + slot * 0.2;
        let bw = slot * 0.6;
        let (yr, yb) = (y(*rate), y(*bound));
        out += &format!(
            "<rect x=\"{x:.1}\" y=\"{yr:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"#4a7ab5\"/>\n\
             <line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{yb:.1}\" y2=\"{yb:.1}\" stroke=\"#c33\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{rate:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>\n",
            (top + plot_h - yr).max(0.0),
            x + bw,
            x + bw / 2.0,
            yb - 4.0,
            x + bw / 2.0,
            top + plot_h + 16.0
        );
    }
    out += &format!(
        "<text x=\"{left}\" y=\"{:.1}\">bars: kconc msg/s; red: the bound concurrency * n / (5 ms + 10 us * n)</text>\n</svg>\n",
        h - 14.0
    );
    out
}

/// Reads the `n` messages of `topic` in `group`, with batches of up to
/// `max_batch` (or the single-message handler), until every one is handled
/// and committed.
async fn measure(
    bootstrap: &str,
    topic: &str,
    group: &str,
    n: usize,
    max_batch: Option<usize>,
) -> Result<Measured, String> {
    // Leaked (a few bytes per run), as `framework`'s probe.
    let probe: &'static Probe = Box::leak(Box::default());
    let sub = match max_batch {
        Some(size) => Subscriber::from_handler(
            "batch",
            [topic],
            group,
            Handler::batch(move |msgs: Vec<Message>, _cx| async move { probe.write(&msgs).await }),
        )
        .max_batch(size),
        None => Subscriber::new("batch", [topic], group, move |m: Message| async move {
            probe.write(std::slice::from_ref(&m)).await;
        })
        .first_poll(crate::FIRST_POLL.get().copied().unwrap_or_default()),
    }
    .concurrency(CONCURRENCY);
    let app = crate::props("KCONC_BENCH_PROPS")
        .into_iter()
        .fold(App::new().brokers(bootstrap), |app, (k, v)| app.property(k, v))
        .subscriber(sub);
    let running = app.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let stats = loop {
        let s = running.stats("batch").ok_or("no such subscriber")?;
        if s.failed + s.panicked > 0 {
            return Err(format!("W-batch: {} handler calls failed", s.failed + s.panicked));
        }
        if s.handled >= n as u64 {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("W-batch: only {} of {n} messages handled", s.handled));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let handled_at = Instant::now();
    let (took, usage) = probe.first.get().map_or((Duration::ZERO, Usage::default()), |(t, u)| {
        (t.elapsed(), Usage::now().since(*u))
    });
    crate::wait_committed(bootstrap, topic, group, deadline, "W-batch").await?;
    let commit_lag = handled_at.elapsed();
    running.shutdown().await;
    let calls = probe.calls.load(Ordering::Relaxed).max(1);
    Ok(Measured {
        rate: n as f64 / took.as_secs_f64(),
        mean_batch: if max_batch.is_some() {
            stats.handled as f64 / stats.batches.max(1) as f64
        } else {
            1.0
        },
        cpu_per_message: usage.cpu / n as u32,
        call: Duration::from_nanos(probe.busy_ns.load(Ordering::Relaxed) / calls),
        commit_lag,
    })
}

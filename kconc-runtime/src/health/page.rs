//! The status page at `/` of the HTTP endpoint: per subscriber its state
//! and the reasons health gives, its counters, rates over the last minutes
//! as small inline charts, and its partitions. Plain HTML and SVG made on
//! the server, with no script and nothing fetched from elsewhere (it works
//! with no internet); it reloads itself every few seconds.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::metrics::{partition_rows, PartitionRow};
use super::{health, HealthThresholds, SubscriberHealth};
use crate::stats::{unix_ms, StatsSnapshot};
use crate::watch::Watched;

/// How often the charts' samples are taken, and how many are kept (10
/// minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES_KEPT: usize = 120;

/// How often the page reloads itself, in seconds.
const RELOAD_SECONDS: u32 = 5;

/// One subscriber's counters at a sample.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    handled: u64,
    /// Failed attempts: errors and panics.
    failed: u64,
    lag: i64,
}

/// The samples of every subscriber at one time.
#[derive(Debug)]
struct Sample {
    at_ms: u64,
    subscribers: Vec<Point>,
}

/// The last minutes of samples the charts draw.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// A subscriber's point: its counters and the lag of its partitions.
fn point(s: &StatsSnapshot, rows: &[PartitionRow]) -> Point {
    Point {
        handled: s.handled,
        failed: s.failed.saturating_add(s.panicked),
        lag: rows.iter().filter_map(|r| r.lag).sum(),
    }
}

fn sample(watched: &[Watched]) -> Sample {
    Sample {
        at_ms: unix_ms(),
        subscribers: watched
            .iter()
            .map(|w| point(&w.stats.snapshot(), &partition_rows(w)))
            .collect(),
    }
}

impl History {
    fn push(&self, sample: Sample) {
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    /// Samples the subscribers now and every [`SAMPLE_EVERY`] until `stop`.
    pub(crate) async fn keep(&self, watched: &[Watched], stop: CancellationToken) {
        loop {
            self.push(sample(watched));
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }
}

/// Escapes text for HTML (names, topics and reasons come from code,
/// configuration and errors).
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as people read it: `850 ms`, `12.5 s`, `3 min 20 s`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

fn ago(t: Option<SystemTime>) -> String {
    match t.and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{} ago", human(d)),
        None => "never".to_owned(),
    }
}

/// The subscriber's state in a word, and its badge's class.
fn state(h: &SubscriberHealth) -> (&'static str, &'static str) {
    if !h.running {
        ("stopped", "bad")
    } else if !h.healthy {
        ("unhealthy", "bad")
    } else if !h.ready {
        ("not ready", "warn")
    } else {
        ("ready", "ok")
    }
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f5f6f8;color:#1d2330}\
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}\
header h1{font-size:20px;margin:0}header a{color:#b9c6ff}main{padding:16px 24px}\
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:16px;margin-bottom:16px}\
h2{font-size:18px;margin:0 0 4px 0;display:flex;gap:10px;align-items:center}\
.badge{font-size:12px;padding:2px 8px;border-radius:10px;color:#fff}\
.ok{background:#2e7d32}.warn{background:#b26a00}.bad{background:#c62828}\
.sub{color:#5b6478;font-size:13px;margin-bottom:8px}\
ul.problems{margin:8px 0;padding-left:20px;color:#8a1c1c}\
.numbers{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:8px;margin:8px 0}\
.numbers div{background:#f5f6f8;border-radius:6px;padding:6px 8px}\
.numbers b{display:block;font-size:18px}.numbers span{font-size:12px;color:#5b6478}\
.charts{display:flex;gap:16px;flex-wrap:wrap;margin:8px 0}\
figure{margin:0}figcaption{font-size:12px;color:#5b6478}\
table{border-collapse:collapse;font-size:13px;margin-top:8px}\
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eceef2}th{color:#5b6478;font-weight:600}\
td.l,th.l{text-align:left}tr.bad td{background:#fdecec}tr.warn td{background:#fff4e0}\
footer{color:#5b6478;font-size:12px;padding:0 24px 16px}";

/// The page, as it is now.
pub(crate) fn render(watched: &[Watched], thresholds: &HealthThresholds, history: &History) -> String {
    let health = health(watched, thresholds);
    let now_ms = unix_ms();
    let title = crate::asyncapi::program_title();
    let (overall, class) = match (health.healthy, health.ready) {
        (true, true) => ("healthy and ready", "ok"),
        (true, false) => ("healthy, not ready", "warn"),
        (false, _) => ("unhealthy", "bad"),
    };
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{RELOAD_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{t} · kconc</title><style>{STYLE}</style></head><body>\
         <header><h1>{t}</h1><span class=\"badge {class}\" id=\"overall\">{overall}</span>\
         <span>{n} subscriber{s}</span>\
         <a href=\"/metrics\">/metrics</a><a href=\"/healthz\">/healthz</a><a href=\"/readyz\">/readyz</a>\
         <a href=\"/asyncapi.json\">/asyncapi.json</a></header><main>",
        t = esc(&title),
        n = health.subscribers.len(),
        s = if health.subscribers.len() == 1 { "" } else { "s" },
    );
    let samples = history.samples.lock();
    let samples: Vec<&Sample> = match &samples {
        Ok(s) => s.iter().collect(),
        Err(_) => Vec::new(),
    };
    for (i, (w, h)) in watched.iter().zip(&health.subscribers).enumerate() {
        // Read once: for the counters, the partitions and the charts' last point.
        let now = Now {
            counts: w.stats.snapshot(),
            rows: partition_rows(w),
        };
        let series: Vec<(u64, Point)> = samples
            .iter()
            .filter_map(|s| Some((s.at_ms, *s.subscribers.get(i)?)))
            .chain(std::iter::once((now_ms, point(&now.counts, &now.rows))))
            .collect();
        subscriber(&mut out, w, h, &now, &series);
    }
    let _ = write!(
        out,
        "</main><footer>kconc status page: reloads every {RELOAD_SECONDS} s; charts sample every {} s and \
         keep {} minutes. Nothing here is fetched from elsewhere.</footer></body></html>",
        SAMPLE_EVERY.as_secs(),
        SAMPLE_EVERY.as_secs() * SAMPLES_KEPT as u64 / 60
    );
    out
}

/// A subscriber's counters and partitions, read once per page.
struct Now {
    counts: StatsSnapshot,
    rows: Vec<PartitionRow>,
}

fn subscriber(out: &mut String, w: &Watched, h: &SubscriberHealth, now: &Now, series: &[(u64, Point)]) {
    let s = &now.counts;
    let (word, class) = state(h);
    let _ = write!(
        out,
        "<section class=\"subscriber\" id=\"sub-{id}\"><h2>{name} <span class=\"badge {class}\">{word}</span></h2>\
         <div class=\"sub\">group <b>{group}</b> · topics {topics}</div>",
        id = esc(&w.name),
        name = esc(&w.name),
        group = esc(&w.group),
        topics = esc(&w.topics.join(", ")),
    );
    if !h.problems.is_empty() {
        out.push_str("<ul class=\"problems\">");
        for p in &h.problems {
            let _ = write!(out, "<li>{}</li>", esc(p));
        }
        out.push_str("</ul>");
    }
    let numbers: [(&str, String); 12] = [
        ("in flight", w.stats.in_flight.load(Ordering::Relaxed).to_string()),
        (
            "waiting for a slot",
            w.stats.buffered.load(Ordering::Relaxed).to_string(),
        ),
        (
            "oldest running handler",
            h.oldest_handler.map_or_else(|| "none".to_owned(), human),
        ),
        ("handled", s.handled.to_string()),
        ("failed attempts", s.failed.saturating_add(s.panicked).to_string()),
        ("retried", s.retried.to_string()),
        ("dead-lettered", s.dead_lettered.to_string()),
        ("skipped", s.skipped.to_string()),
        ("stopped partitions", s.stopped.to_string()),
        ("commits", s.commits.to_string()),
        ("last commit", ago(h.last_commit)),
        ("assigned partitions", h.assigned.len().to_string()),
    ];
    out.push_str("<div class=\"numbers\">");
    for (label, value) in numbers {
        let _ = write!(out, "<div><b>{}</b><span>{label}</span></div>", esc(&value));
    }
    out.push_str("</div><div class=\"charts\">");
    let rate = |f: fn(&Point) -> u64| -> Vec<f64> {
        series
            .windows(2)
            .map(|pair| {
                let (t0, a) = pair[0];
                let (t1, b) = pair[1];
                let secs = (t1.saturating_sub(t0) as f64 / 1000.0).max(0.001);
                f(&b).saturating_sub(f(&a)) as f64 / secs
            })
            .collect()
    };
    chart(out, "handled per second", &rate(|p| p.handled), "#2e7d32");
    chart(out, "failed attempts per second", &rate(|p| p.failed), "#c62828");
    let lag: Vec<f64> = series.iter().map(|(_, p)| p.lag as f64).collect();
    chart(out, "lag (messages behind, all partitions)", &lag, "#3949ab");
    out.push_str("</div>");
    partitions(out, &now.rows, h);
    out.push_str("</section>");
}

/// A small line chart of `values` (oldest first), with its latest and
/// highest value in the caption.
fn chart(out: &mut String, caption: &str, values: &[f64], color: &str) {
    const W: f64 = 260.0;
    const H: f64 = 56.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let latest = values.last().copied().unwrap_or(0.0);
    let _ = write!(
        out,
        "<figure><svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{caption}\"><rect width=\"{W}\" height=\"{H}\" fill=\"#f5f6f8\"/>"
    );
    if values.len() >= 2 {
        let step = W / (values.len() - 1) as f64;
        let scale = if max > 0.0 { (H - 6.0) / max } else { 0.0 };
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, H - 3.0 - v * scale))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    } else {
        let _ = write!(
            out,
            "<text x=\"8\" y=\"32\" font-size=\"12\" fill=\"#5b6478\">collecting samples…</text>"
        );
    }
    let _ = write!(
        out,
        "</svg><figcaption>{caption}: <b>{}</b> now, {} at most</figcaption></figure>",
        number(latest),
        number(max)
    );
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 || v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn partitions(out: &mut String, rows: &[PartitionRow], h: &SubscriberHealth) {
    let assigned = &h.assigned;
    if rows.is_empty() && assigned.is_empty() {
        out.push_str("<p class=\"sub\">No partitions assigned or committed.</p>");
        return;
    }
    out.push_str(
        "<table class=\"partitions\"><tr><th class=\"l\">topic</th><th>partition</th><th>committed</th>\
         <th>high watermark (last fetched)</th><th>lag</th><th class=\"l\">state</th></tr>",
    );
    let mut listed: Vec<(String, i32)> = Vec::new();
    for PartitionRow {
        topic,
        partition,
        committed,
        high,
        lag,
    } in rows
    {
        let (partition, committed, high, lag) = (*partition, *committed, *high, *lag);
        let key = (topic.clone(), partition);
        let (state, class) = partition_state(h, &key, assigned.contains(&key));
        let shown = |v: Option<i64>| v.map_or_else(|| "–".to_owned(), |v| v.to_string());
        let _ = write!(
            out,
            "<tr class=\"{class}\"><td class=\"l\">{}</td><td>{partition}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"l\">{}</td></tr>",
            esc(topic),
            shown(committed),
            shown(high),
            shown(lag),
            esc(&state)
        );
        listed.push(key);
    }
    for key in assigned.iter().filter(|k| !listed.contains(k)) {
        let (state, class) = partition_state(h, key, true);
        let _ = write!(
            out,
            "<tr class=\"{class}\"><td class=\"l\">{}</td><td>{}</td><td>–</td><td>–</td><td>–</td>\
             <td class=\"l\">{}</td></tr>",
            esc(&key.0),
            key.1,
            esc(&state)
        );
    }
    out.push_str("</table>");
}

/// A partition's state in words, and its row's class.
fn partition_state(h: &SubscriberHealth, key: &(String, i32), assigned: bool) -> (String, &'static str) {
    let is = |topic: &str, partition: i32| topic == key.0 && partition == key.1;
    if let Some(p) = h.stopped.iter().find(|p| is(&p.topic, p.partition)) {
        let at = if p.offset >= 0 {
            format!(" at offset {}", p.offset)
        } else {
            String::new()
        };
        return (format!("stopped{at}: {}", p.reason), "bad");
    }
    if let Some(p) = h.stalled.iter().find(|p| is(&p.topic, p.partition)) {
        return (format!("stalled for {}", human(p.stalled_for)), "warn");
    }
    if h.paused.iter().any(|(t, p)| is(t, *p)) {
        return ("paused (backpressure)".to_owned(), "warn");
    }
    if assigned {
        ("assigned".to_owned(), "")
    } else {
        ("not assigned".to_owned(), "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn a_chart_needs_two_values_and_scales_to_the_highest() {
        let mut one = String::new();
        chart(&mut one, "c", &[3.0], "#000");
        assert!(one.contains("collecting samples") && !one.contains("polyline"), "{one}");
        let mut two = String::new();
        chart(&mut two, "c", &[0.0, 10.0], "#000");
        assert!(two.contains("points=\"0.0,53.0 260.0,3.0\""), "{two}");
        assert!(two.contains("<b>10</b> now, 10 at most"), "{two}");
    }
}

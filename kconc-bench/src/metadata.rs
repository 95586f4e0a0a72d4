//! `--metadata`: what the finished offsets in each commit's metadata cost.
//!
//! For concurrency 100 and 1,000, a simulated partition dispatches offsets
//! in order to that many slots, each message taking 1-20 ms (the e2e
//! tests' handler), and at every 100th completion (a commit batch) takes
//! the finished offsets above the first unfinished one: what a commit
//! encodes. It prints the largest such set, its metadata's size and form,
//! and the median time to encode and to decode one, next to the round trip
//! of one synchronous commit of a raw rdkafka consumer on the same broker,
//! with and without that metadata.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kconc_runtime::__private::{decode_finished, encode_finished};
use kconc_runtime::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use kconc_runtime::rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The finished offsets above the first unfinished one at each commit
/// (every `batch` completions) of `messages` with `concurrency` slots:
/// (first unfinished, finished above it) for each.
fn commits(concurrency: usize, messages: u64, batch: usize) -> Vec<(i64, Vec<i64>)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // (end time in µs, offset) of the running ones.
    let mut running: BTreeSet<(u64, i64)> = BTreeSet::new();
    let mut finished: BTreeSet<i64> = BTreeSet::new();
    let (mut next, mut head, mut done, mut now) = (0i64, 0i64, 0usize, 0u64);
    let mut out = Vec::new();
    while (next as u64) < messages || !running.is_empty() {
        while running.len() < concurrency && (next as u64) < messages {
            running.insert((now + 1_000 + rng.below(19_001), next));
            next += 1;
        }
        let Some((end, offset)) = running.pop_first() else {
            break;
        };
        now = end;
        finished.insert(offset);
        while finished.remove(&head) {
            head += 1;
        }
        done += 1;
        if done % batch == 0 {
            out.push((head, finished.iter().copied().collect()));
        }
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The median round trip of a synchronous commit of partition 0 of
/// `topic`, with `metadata` (or none).
fn commit_round_trip(bootstrap: &str, topic: &str, metadata: Option<&str>) -> Result<Duration, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("bench-metadata-{}-{}", std::process::id(), metadata.map_or(0, str::len)),
        )
        .set("enable.auto.commit", "false")
        // librdkafka's mock cluster holds a join for session.timeout.ms - 1 s.
        .set("session.timeout.ms", "3000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        if Instant::now() > until {
            return Err("no assignment within 30 s".into());
        }
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let mut times = Vec::new();
    for i in 0..200 {
        let mut tpl = TopicPartitionList::new();
        let mut el = tpl.add_partition(topic, 0);
        el.set_offset(Offset::Offset(i)).map_err(|e| e.to_string())?;
        if let Some(m) = metadata {
            el.set_metadata(m);
        }
        let t = Instant::now();
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| e.to_string())?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

pub(crate) fn run(bootstrap: &str, topic: &str) -> Result<(), String> {
    println!(
        "commit metadata (finished offsets above the committed one), a commit every 100 completions, handlers 1-20 ms:"
    );
    let mut largest_text = String::new();
    for concurrency in [100, 1_000] {
        let commits = commits(concurrency, 50_000, 100);
        let (head, set) = commits.iter().max_by_key(|(_, s)| s.len()).cloned().unwrap_or_default();
        let Some((text, truncated)) = encode_finished(head, &set) else {
            println!("  concurrency {concurrency:>5}: nothing finished above the head at any commit");
            continue;
        };
        let span = set.last().map_or(0, |l| l - head + 1);
        let sizes: Vec<usize> = commits
            .iter()
            .filter_map(|(h, s)| encode_finished(*h, s).map(|(t, _)| t.len()))
            .collect();
        let mean_size = sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64;
        let mut encode = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let e = encode_finished(head, &set);
            encode.push(t.elapsed());
            std::hint::black_box(e);
            let t = Instant::now();
            let n = decode_finished(text.as_bytes(), head);
            decode.push(t.elapsed());
            std::hint::black_box(n);
        }
        println!(
            "  concurrency {concurrency:>5}: largest set {} finished over a span of {span} offsets -> {} bytes{} (mean over {} commits {mean_size:.0} bytes); encode {:.1} us, decode {:.1} us per commit",
            set.len(),
            text.len(),
            if truncated { ", cut to fit" } else { "" },
            sizes.len(),
            median(encode).as_secs_f64() * 1e6,
            median(decode).as_secs_f64() * 1e6,
        );
        if text.len() > largest_text.len() {
            largest_text = text;
        }
    }
    let without = commit_round_trip(bootstrap, topic, None)?;
    let with = commit_round_trip(bootstrap, topic, Some(&largest_text))?;
    println!(
        "  raw rdkafka synchronous commit, median of 200: {:.0} us without metadata, {:.0} us with the largest above ({} bytes)",
        without.as_secs_f64() * 1e6,
        with.as_secs_f64() * 1e6,
        largest_text.len()
    );
    Ok(())
}

//! `--gate`: kconc's cost per message, against figures recorded in the
//! repository (`kconc-bench/gate.txt`); fails when one has grown by more
//! than 5 %.
//!
//! W-noop with each consumer in its own process (as `--separate`), on the
//! embedded cluster, without librdkafka's statistics. Each child runs
//! twice, on 20,000 and on 50,000 messages, and the difference of the two
//! runs divided by 30,000 is its cost per message: start-up and shut-down
//! cancel out. Two counts per message, of kconc (`concurrency = 100`, the
//! W-noop handler, once taking the `Message` and once `Json<Order>`, whose
//! record is not copied) and of the raw `BaseConsumer` loop doing the same
//! work:
//! - instructions, counted by `valgrind --tool=callgrind` (the whole child
//!   process, every thread); left out, with a note, where valgrind is not
//!   installed;
//! - heap allocations, counted by the bench's allocator; of them, those
//!   made on kconc's poll thread (a thread named `kconc-poll-..`), which
//!   fail the gate above [`POLL_THREAD_MAX`] per message whatever was
//!   recorded: its steady state allocates nothing per message.
//!
//! Counts, not timings, so a busy machine hardly moves them: each run
//! reads a topic of its own size to the end. (Both sizes once read one
//! topic of 50,000 records, and the smaller run stopped with 30,000 of
//! them fetched and unread; dropping those cost kconc a varying amount,
//! and its count per message moved by up to 15 % between runs of one
//! build. Read to the end, five pairs of one build agree within 1 %.)
//! Each figure is the median of [`ROUNDS`] pairs. The gate compares kconc's own counts
//! (its overhead over the raw loop is printed beside them: a difference
//! of two noisy figures is too noisy to gate at 5 %). Build in release
//! (`scripts/gate` does): the recorded figures are a release build's.
//! `--gate --record` writes the figures measured as the new reference.
//! `--gate --vs OTHER_BUILD` (a kconc-bench binary of another commit)
//! measures that build's two kconc children in the same rounds, taking turns, and
//! prints the two side by side instead of gating: a change's before and
//! after.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::produce;

/// Where the reference figures are kept.
fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gate.txt")
}

/// How much a figure may grow over its reference.
const TOLERANCE: f64 = 0.05;

/// The two sizes of a run: their difference is what is measured.
const SMALL: usize = 20_000;
const LARGE: usize = 50_000;

/// Pairs of runs per kind; the median is taken.
const ROUNDS: usize = 3;

fn middle(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One child's counts: instructions (if measured) and allocations, over
/// the whole run.
#[derive(Debug, Clone, Copy)]
struct Counts {
    instructions: Option<f64>,
    allocations: f64,
    poll_allocations: f64,
}

/// A cost per message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PerMessage {
    pub(crate) instructions: Option<f64>,
    pub(crate) allocations: f64,
    /// Of them, on kconc's poll thread (none for the raw loop).
    pub(crate) poll_allocations: f64,
}

/// The poll thread's allocations per message the gate allows: none per
/// message. What it does allocate is driven by time (the watermarks
/// health shows, every few hundred ms): at most about one per few hundred
/// messages.
const POLL_THREAD_MAX: f64 = 0.01;

/// The topics the gate produces to.
pub(crate) fn topics() -> impl Iterator<Item = String> {
    [SMALL, LARGE].into_iter().map(topic)
}

/// The topic of the runs on `n` messages (`n` records on 8 partitions).
pub(crate) fn topic(n: usize) -> String {
    format!("bench-gate-{n}")
}

fn valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one child on `n` messages of `topic` (a fresh group) and returns
/// its counts.
fn count(
    (kind, exe): (&str, &Path),
    brokers: &str,
    topic: &str,
    n: usize,
    callgrind: bool,
    round: usize,
) -> Result<Counts, String> {
    let label = if exe == std::env::current_exe().map_err(|e| e.to_string())?.as_path() {
        kind.to_owned()
    } else {
        format!("{kind}-vs")
    };
    let out_file = std::env::temp_dir().join(format!("kconc-gate-{label}-{n}-{}.callgrind", std::process::id()));
    let mut command = if callgrind {
        let mut c = Command::new("valgrind");
        c.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let group = format!("gate-{label}-{n}-{round}-{}", std::process::id());
    let out = command
        .args(["--child", kind, brokers, topic, &group, &n.to_string()])
        // No statistics reports: building them costs instructions that
        // vary with a run's length.
        .env("KCONC_BENCH_STATS_MS", "0")
        .output()
        .map_err(|e| format!("cannot run the {kind} child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{kind} child on {n} messages failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let figure = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("CHILD "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(name)))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("{kind} child printed no {name}: {stdout}"))
    };
    let allocations = figure("allocs_total=")?;
    // A build from before this figure prints none (`--vs`): NaN.
    let poll_allocations = figure("poll_allocs_total=").unwrap_or(f64::NAN);
    let instructions = if callgrind {
        let text = std::fs::read_to_string(&out_file).map_err(|e| format!("{}: {e}", out_file.display()))?;
        // `KCONC_BENCH_KEEP_CALLGRIND=1` keeps the profiles (in the temporary
        // directory), for `callgrind_annotate`.
        if std::env::var_os("KCONC_BENCH_KEEP_CALLGRIND").is_none() {
            let _ = std::fs::remove_file(&out_file);
        }
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .ok_or_else(|| format!("{}: no totals line", out_file.display()))?;
        Some(total)
    } else {
        None
    };
    Ok(Counts {
        instructions,
        allocations,
        poll_allocations,
    })
}

/// Measures the raw loop's and kconc's costs per message, and with `vs`
/// (another build of kconc-bench) that build's kconc too, the rounds of
/// all of them taking turns. Returns them in that order.
pub(crate) fn measure(brokers: &str, vs: Option<&Path>) -> Result<Vec<PerMessage>, String> {
    let callgrind = valgrind();
    if !callgrind {
        println!("gate: valgrind is not installed: allocations only (apt-get install valgrind for instructions)");
    }
    // A topic per size, each read to its end: a child that stopped with
    // records left unread would pay for dropping them, in the smaller run
    // only, and the difference would not be the cost of a message.
    for n in [SMALL, LARGE] {
        produce(brokers, &topic(n), n, 1_000)?;
    }
    let span = (LARGE - SMALL) as f64;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // kconc twice: its W-noop handler taking the `Message` (a copy), and
    // taking `Json<Order>` (the record lent to the extractor, not copied).
    let mut kinds = vec![
        ("raw", me.as_path()),
        ("kconc", me.as_path()),
        ("kconc-json", me.as_path()),
    ];
    if let Some(other) = vs {
        kinds.push(("kconc", other));
        kinds.push(("kconc-json", other));
    }
    // The median of `ROUNDS` pairs, the kinds taking turns.
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new()); kinds.len()];
    for round in 0..ROUNDS {
        for (&kind, (instructions, allocations, poll)) in kinds.iter().zip(&mut samples) {
            let small = count(kind, brokers, &topic(SMALL), SMALL, callgrind, round)?;
            let large = count(kind, brokers, &topic(LARGE), LARGE, callgrind, round)?;
            if let Some(i) = small.instructions.zip(large.instructions).map(|(s, l)| (l - s) / span) {
                instructions.push(i);
            }
            allocations.push((large.allocations - small.allocations) / span);
            poll.push((large.poll_allocations - small.poll_allocations) / span);
        }
    }
    let mut per = Vec::new();
    for ((kind, exe), (instructions, allocations, poll)) in kinds.into_iter().zip(samples) {
        let kind = if exe == me.as_path() {
            kind.to_owned()
        } else {
            format!("{kind} of {}", exe.display())
        };
        let text = |v: &[f64], digits: usize| v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(" ");
        println!(
            "gate: {kind:<5} instructions per message [{}], allocations [{}], of them on the poll thread [{}]",
            text(&instructions, 0),
            text(&allocations, 2),
            text(&poll, 4)
        );
        let instructions = (!instructions.is_empty()).then(|| middle(&instructions));
        per.push(PerMessage {
            instructions,
            allocations: middle(&allocations),
            poll_allocations: middle(&poll),
        });
    }
    Ok(per)
}

/// The reference figures per message from `gate.txt`: kconc's with the
/// `Message` handler (`instructions N`, `allocations X`) with `prefix` "",
/// with the `Json<T>` one (`json_instructions`, `json_allocations`) with
/// `prefix` "json_"; `#` starts a comment. `None` when that handler's
/// allocations are not recorded.
pub(crate) fn parse_reference(text: &str, prefix: &str) -> Result<Option<PerMessage>, String> {
    let mut instructions = None;
    let mut allocations = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("gate.txt: `{line}` is not `NAME VALUE`"))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("gate.txt: `{value}` is not a number"))?;
        if !["instructions", "allocations", "json_instructions", "json_allocations"].contains(&key) {
            return Err(format!("gate.txt: unknown figure `{key}`"));
        }
        match key.strip_prefix(prefix) {
            Some("instructions") => instructions = Some(value),
            Some("allocations") => allocations = Some(value),
            _ => {}
        }
    }
    Ok(allocations.map(|allocations| PerMessage {
        instructions,
        allocations,
        // Not recorded: the gate's bound is none per message.
        poll_allocations: 0.0,
    }))
}

/// The figures of `who` that grew more than [`TOLERANCE`] over the
/// reference.
pub(crate) fn regressions(who: &str, measured: PerMessage, reference: PerMessage) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, m: f64, r: f64| {
        // An absolute floor for figures near zero (a fraction of an
        // allocation moves with batching).
        let limit = r * (1.0 + TOLERANCE) + if what == "allocations" { 0.05 } else { 0.0 };
        if m > limit {
            out.push(format!(
                "{who}'s {what} per message: {m:.2}, more than {limit:.2} (recorded {r:.2} + 5 %)"
            ));
        }
    };
    if let (Some(m), Some(r)) = (measured.instructions, reference.instructions) {
        check("instructions", m, r);
    }
    check("allocations", measured.allocations, reference.allocations);
    if measured.poll_allocations > POLL_THREAD_MAX {
        out.push(format!(
            "{who}'s allocations on the poll thread per message: {:.4}, more than {POLL_THREAD_MAX} (its steady state allocates nothing per message)",
            measured.poll_allocations
        ));
    }
    out
}

/// `--gate [--record | --vs OTHER_BUILD]`.
pub(crate) fn run(brokers: &str, record: bool, vs: Option<&Path>) -> Result<(), String> {
    let per = measure(brokers, vs)?;
    let (raw, measured, json) = match per[..] {
        [raw, kconc, json, ..] => (raw, kconc, json),
        _ => return Err("gate: a kind was not measured".into()),
    };
    if let [_, _, _, other, other_json] = per[..] {
        // A comparison of two builds, not a gate.
        for (who, a, b) in [("Message", measured, other), ("Json<T>", json, other_json)] {
            if let (Some(ai), Some(bi)) = (a.instructions, b.instructions) {
                println!(
                    "gate --vs: {who} handler: instructions per message {ai:.0} against {bi:.0} ({:+.0})",
                    ai - bi
                );
            }
            println!(
                "gate --vs: {who} handler: allocations per message {:.2} against {:.2} ({:+.2}), on the poll thread {:.4} against {:.4}",
                a.allocations,
                b.allocations,
                a.allocations - b.allocations,
                a.poll_allocations,
                b.poll_allocations
            );
        }
        return Ok(());
    }
    let path = reference_path();
    for (who, m) in [("kconc", measured), ("kconc, Json<T> handler", json)] {
        let over_a = m.allocations - raw.allocations;
        match m.instructions.zip(raw.instructions) {
            Some((k, r)) => println!(
                "gate: {who}: {k:.0} instructions and {:.2} allocations per message ({:.4} on the poll thread); over the raw loop: {:.0} and {over_a:.2}",
                m.allocations,
                m.poll_allocations,
                k - r
            ),
            None => println!(
                "gate: {who}: {:.2} allocations per message ({:.4} on the poll thread); over the raw loop: {over_a:.2}",
                m.allocations, m.poll_allocations
            ),
        }
    }
    if record {
        let (Some(instructions), Some(json_instructions)) = (measured.instructions, json.instructions) else {
            return Err("gate --record needs valgrind: both figures are recorded".into());
        };
        let text = format!(
            "# kconc-bench --gate: kconc's instructions and allocations per message\n\
             # (W-noop, release build, embedded cluster; see kconc-bench/src/gate.rs),\n\
             # its handler taking the `Message`, and (json_) taking `Json<Order>`.\n\
             # Measured with them, the raw loop's: {} instructions, {:.2} allocations.\n\
             instructions {instructions:.0}\nallocations {:.2}\n\
             json_instructions {json_instructions:.0}\njson_allocations {:.2}\n",
            raw.instructions.map_or("?".to_owned(), |i| format!("{i:.0}")),
            raw.allocations,
            measured.allocations,
            json.allocations
        );
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("gate: recorded in {}", path.display());
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reference = parse_reference(&text, "")?.ok_or("gate.txt: no `allocations` figure")?;
    let mut failed = regressions("kconc", measured, reference);
    if let Some(reference) = parse_reference(&text, "json_")? {
        failed.extend(regressions("kconc (Json<T> handler)", json, reference));
    }
    if failed.is_empty() {
        println!("gate: passed (within 5 % of {})", path.display());
        Ok(())
    } else {
        Err(format!("gate failed:\n  {}", failed.join("\n  ")))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_reference, regressions, PerMessage};

    #[test]
    fn a_figure_over_its_reference_by_more_than_five_percent_fails() {
        let text = "# c\ninstructions 4000\nallocations 2.0\njson_instructions 3000\njson_allocations 1.0\n";
        let reference = parse_reference(text, "").unwrap().unwrap();
        assert_eq!(
            reference,
            PerMessage {
                instructions: Some(4000.0),
                allocations: 2.0,
                poll_allocations: 0.0
            }
        );
        let json = parse_reference(text, "json_").unwrap().unwrap();
        assert_eq!(json.instructions, Some(3000.0));
        let ok = PerMessage {
            instructions: Some(4190.0),
            allocations: 2.1,
            poll_allocations: 0.005,
        };
        assert!(regressions("kconc", ok, reference).is_empty());
        let worse = PerMessage {
            instructions: Some(4210.0),
            allocations: 2.2,
            poll_allocations: 0.0,
        };
        assert_eq!(regressions("kconc", worse, reference).len(), 2);
        let poll_thread = PerMessage {
            poll_allocations: 0.02,
            ..ok
        };
        assert_eq!(
            regressions("kconc", poll_thread, reference).len(),
            1,
            "the poll thread allocates per message"
        );
        assert_eq!(regressions("json", ok, json).len(), 2);
        let no_valgrind = PerMessage {
            instructions: None,
            allocations: 2.0,
            poll_allocations: 0.0,
        };
        assert!(regressions("kconc", no_valgrind, reference).is_empty());
        assert!(parse_reference("instructions x", "").is_err());
        assert!(
            parse_reference("instructions 1", "").unwrap().is_none(),
            "no allocations: no figures"
        );
        assert!(parse_reference("instructions 1\nallocations 1", "json_")
            .unwrap()
            .is_none());
        assert!(parse_reference("other 1", "").is_err());
    }
}

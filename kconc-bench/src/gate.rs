//! `--gate`: kconc's cost per message, against figures recorded in the
//! repository (`kconc-bench/gate.txt`); fails when one has grown by more
//! than 5 %.
//!
//! W-noop with each consumer in its own process (as `--separate`), on the
//! embedded cluster, without librdkafka's statistics. Each child runs
//! twice, on 20,000 and on 50,000 messages, and the difference of the two
//! runs divided by 30,000 is its cost per message: start-up and shut-down
//! cancel out. Two counts per message, of kconc (`concurrency = 100`, the
//! W-noop handler) and of the raw `BaseConsumer` loop doing the same work:
//! - instructions, counted by `valgrind --tool=callgrind` (the whole child
//!   process, every thread); left out, with a note, where valgrind is not
//!   installed;
//! - heap allocations, counted by the bench's allocator.
//!
//! Counts, not timings, so a busy machine does not move them; but how the
//! poll thread's and the workers' turns fall does (how many messages one
//! wake-up carries), by several percent from run to run, so each figure is
//! the median of [`ROUNDS`] pairs. The gate compares kconc's own counts
//! (its overhead over the raw loop is printed beside them: a difference
//! of two noisy figures is too noisy to gate at 5 %). Build in release
//! (`scripts/gate` does): the recorded figures are a release build's.
//! `--gate --record` writes the figures measured as the new reference.

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
const ROUNDS: usize = 5;

fn middle(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One child's counts: instructions (if measured) and allocations, over
/// the whole run.
#[derive(Debug, Clone, Copy)]
struct Counts {
    instructions: Option<f64>,
    allocations: f64,
}

/// A cost per message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PerMessage {
    pub(crate) instructions: Option<f64>,
    pub(crate) allocations: f64,
}

fn valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one child on `n` messages of `topic` (a fresh group) and returns
/// its counts.
fn count(kind: &str, brokers: &str, topic: &str, n: usize, callgrind: bool, round: usize) -> Result<Counts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out_file = std::env::temp_dir().join(format!("kconc-gate-{kind}-{n}-{}.callgrind", std::process::id()));
    let mut command = if callgrind {
        let mut c = Command::new("valgrind");
        c.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let group = format!("gate-{kind}-{n}-{round}-{}", std::process::id());
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
    let allocations = stdout
        .lines()
        .find(|l| l.starts_with("CHILD "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("allocs_total=")))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{kind} child printed no allocation count: {stdout}"))?;
    let instructions = if callgrind {
        let text = std::fs::read_to_string(&out_file).map_err(|e| format!("{}: {e}", out_file.display()))?;
        let _ = std::fs::remove_file(&out_file);
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
    })
}

/// Measures kconc's and the raw loop's costs per message.
pub(crate) fn measure(brokers: &str) -> Result<(PerMessage, PerMessage), String> {
    let callgrind = valgrind();
    if !callgrind {
        println!("gate: valgrind is not installed: allocations only (apt-get install valgrind for instructions)");
    }
    let topic = "bench-gate";
    produce(brokers, topic, LARGE, 1_000)?;
    let span = (LARGE - SMALL) as f64;
    let mut per = Vec::new();
    for kind in ["raw", "kconc"] {
        // How the poll thread's and the workers' turns fall varies from
        // run to run (under valgrind, threads take turns): the median of
        // `ROUNDS` pairs.
        let (mut instructions, mut allocations) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let small = count(kind, brokers, topic, SMALL, callgrind, round)?;
            let large = count(kind, brokers, topic, LARGE, callgrind, round)?;
            if let Some(i) = small.instructions.zip(large.instructions).map(|(s, l)| (l - s) / span) {
                instructions.push(i);
            }
            allocations.push((large.allocations - small.allocations) / span);
        }
        let text = |v: &[f64], digits: usize| v.iter().map(|x| format!("{x:.digits$}")).collect::<Vec<_>>().join(" ");
        println!(
            "gate: {kind:<5} instructions per message [{}], allocations [{}]",
            text(&instructions, 0),
            text(&allocations, 2)
        );
        let instructions = (!instructions.is_empty()).then(|| middle(instructions));
        per.push(PerMessage {
            instructions,
            allocations: middle(allocations),
        });
    }
    let [raw, kconc] = per[..] else {
        return Err("gate: a kind was not measured".into());
    };
    Ok((kconc, raw))
}

/// The reference figures, kconc's per message, from `gate.txt`
/// (`instructions N`, `allocations X`; `#` starts a comment).
pub(crate) fn parse_reference(text: &str) -> Result<PerMessage, String> {
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
        match key {
            "instructions" => instructions = Some(value),
            "allocations" => allocations = Some(value),
            other => return Err(format!("gate.txt: unknown figure `{other}`")),
        }
    }
    Ok(PerMessage {
        instructions,
        allocations: allocations.ok_or("gate.txt: no `allocations` figure")?,
    })
}

/// The figures that grew more than [`TOLERANCE`] over the reference.
pub(crate) fn regressions(measured: PerMessage, reference: PerMessage) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, m: f64, r: f64| {
        // An absolute floor for figures near zero (a fraction of an
        // allocation moves with batching).
        let limit = r * (1.0 + TOLERANCE) + if what == "allocations" { 0.05 } else { 0.0 };
        if m > limit {
            out.push(format!(
                "kconc's {what} per message: {m:.2}, more than {limit:.2} (recorded {r:.2} + 5 %)"
            ));
        }
    };
    if let (Some(m), Some(r)) = (measured.instructions, reference.instructions) {
        check("instructions", m, r);
    }
    check("allocations", measured.allocations, reference.allocations);
    out
}

/// `--gate [--record]`.
pub(crate) fn run(brokers: &str, record: bool) -> Result<(), String> {
    let (measured, raw) = measure(brokers)?;
    let path = reference_path();
    let over_a = measured.allocations - raw.allocations;
    match measured.instructions.zip(raw.instructions) {
        Some((k, r)) => println!(
            "gate: kconc {k:.0} instructions and {:.2} allocations per message; over the raw loop: {:.0} and {over_a:.2}",
            measured.allocations,
            k - r
        ),
        None => println!(
            "gate: kconc {:.2} allocations per message; over the raw loop: {over_a:.2}",
            measured.allocations
        ),
    }
    if record {
        let instructions = measured
            .instructions
            .ok_or("gate --record needs valgrind: both figures are recorded")?;
        let text = format!(
            "# kconc-bench --gate: kconc's instructions and allocations per message\n\
             # (W-noop, release build, embedded cluster; see kconc-bench/src/gate.rs).\n\
             # Measured with them, the raw loop's: {} instructions, {:.2} allocations.\n\
             instructions {instructions:.0}\nallocations {:.2}\n",
            raw.instructions.map_or("?".to_owned(), |i| format!("{i:.0}")),
            raw.allocations,
            measured.allocations
        );
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("gate: recorded in {}", path.display());
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reference = parse_reference(&text)?;
    let failed = regressions(measured, reference);
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
        let reference = parse_reference("# c\ninstructions 4000\nallocations 2.0\n").unwrap();
        assert_eq!(
            reference,
            PerMessage {
                instructions: Some(4000.0),
                allocations: 2.0
            }
        );
        let ok = PerMessage {
            instructions: Some(4190.0),
            allocations: 2.1,
        };
        assert!(regressions(ok, reference).is_empty());
        let worse = PerMessage {
            instructions: Some(4210.0),
            allocations: 2.2,
        };
        assert_eq!(regressions(worse, reference).len(), 2);
        let no_valgrind = PerMessage {
            instructions: None,
            allocations: 2.0,
        };
        assert!(regressions(no_valgrind, reference).is_empty());
        assert!(parse_reference("instructions x").is_err());
        assert!(parse_reference("instructions 1").is_err(), "allocations are required");
    }
}

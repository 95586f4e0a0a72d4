//! What the generated `main` says before it connects to anything: `--help`
//! names the real default brokers, a bad flag fails before any broker or
//! cluster starts (so the output is the one error line), and `--list` fails
//! exactly where a real run would. Runs the `service` example as a process.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

fn service(args: &[&str]) -> Output {
    Command::new(common::example_binary("service"))
        .args(args)
        .env_remove("KCONC_BROKERS")
        .env_remove("KCONC_HTTP")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `main!(default_brokers = "embedded")` runs on the embedded cluster when
/// no brokers are given; `--help` says so, in both its forms.
#[test]
fn help_names_the_default_brokers_the_program_really_uses() {
    for flag in ["--help", "-h"] {
        let out = service(&[flag]);
        assert!(out.status.success(), "{flag}: {out:?}");
        let help = stdout(&out);
        assert!(help.contains("Default: embedded"), "{flag}:\n{help}");
        assert!(!help.contains("localhost:9092"), "{flag}:\n{help}");
    }
}

/// A bad `--http` fails start-up with one line naming the setting, before
/// the embedded cluster or any consumer starts (nothing to tear down, no
/// librdkafka error on the way out).
#[test]
fn a_bad_http_address_fails_before_anything_starts() {
    let out = service(&["--http", "nonsense"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--http/KCONC_HTTP `nonsense`"), "{err}");
    for started in ["EMBEDDED BROKER", "librdkafka", "ERROR", "WARN"] {
        assert!(
            !err.contains(started),
            "something started before the check ({started}):\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 1, "one error line:\n{err}");
    // A busy address as well.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = service(&["--http", &addr]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("--http/KCONC_HTTP `{addr}`")), "{err}");
    assert!(!err.contains("EMBEDDED BROKER"), "{err}");
}

/// `--list` shows the configuration a run would use, so it fails where a
/// run fails: an unknown `--only`, a bad `--http`.
#[test]
fn list_fails_where_a_run_fails() {
    for args in [
        &["--list", "--only", "nosuch"][..],
        &["--list", "--http", "nonsense"][..],
    ] {
        let listed = service(args);
        let err = stderr(&listed);
        assert_eq!(listed.status.code(), Some(1), "{args:?}: {err}");
        let run = service(&args[1..]);
        assert_eq!(run.status.code(), Some(1), "{args:?} without --list");
        assert_eq!(err, stderr(&run), "{args:?}: --list and a run give the same error");
    }
    let listed = service(&["--list", "--only", "service::log_event"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(stdout(&listed).contains("service::log_event"));
}

/// `main!(state = ..)`: a start-up hook that fails (the billing example's
/// ledger at an address it cannot open) ends the program with exit code 1
/// and the hook's error, before any consumer is created.
#[test]
fn a_failing_start_up_hook_exits_non_zero_before_any_consumer_starts() {
    let out = Command::new(common::example_binary("billing"))
        .env_remove("KCONC_BROKERS")
        .env_remove("KCONC_HTTP")
        .env("RUST_LOG", "kconc_runtime=debug")
        .env("LEDGER_URL", "postgres://ledger.invalid/db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "error: start-up hook failed: cannot open the ledger at `postgres://ledger.invalid/db`: \
         this example has only `memory://` ledgers"
    );
    assert!(!err.contains("kconc_runtime::engine"), "a consumer started:\n{err}");
}

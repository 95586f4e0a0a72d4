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

/// Traces need the `otel` feature: without it, `--trace-relation parent`
/// fails start-up naming the flag instead of being ignored.
#[test]
#[cfg(not(feature = "otel"))]
fn a_trace_relation_without_the_otel_feature_fails_naming_the_flag() {
    let out = service(&["--trace-relation", "parent"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--trace-relation/KCONC_TRACE_RELATION"), "{err}");
    assert!(err.contains("`otel` feature"), "{err}");
    assert!(service(&["--trace-relation", "link", "--list"]).status.success());
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

/// `GET path` on `addr`: the status code, if anything answered.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

/// A free port on 127.0.0.1, for `--http`.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A closed standard error never stops the service (a new user's trial of
/// a6d8e9a, bug 1): with its log piped into something that stops reading
/// (`| head -1`), every later log line fails to write. It still comes up,
/// stays ready, and exits 0 on SIGTERM. At a6d8e9a the log writer's report
/// of its own write error panicked whichever thread logged next: the main
/// thread, a poll thread, or the signal listener (SIGTERM then ignored).
#[test]
fn a_closed_stderr_never_stops_the_service() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let addr = free_addr();
    let mut child = Command::new(common::example_binary("service"))
        .args(["--http", &addr])
        .env_remove("KCONC_BROKERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first log line, then the pipe is closed, as `head -1` would.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    drop(err);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(&addr, "/readyz") != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the service exited with {status} before it was ready (its first log line: {first})");
        }
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM was ignored: the service still ran 30 s later");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}

/// `KCONC_INSTANCE_ID`, documented and shown by `--help`, is read (at
/// a6d8e9a it was refused as an unknown variable): `--list` runs, and the
/// unknown-variable message lists it among those kconc reads.
#[test]
fn the_instance_id_variable_is_read() {
    let out = Command::new(common::example_binary("service"))
        .arg("--list")
        .env("KCONC_INSTANCE_ID", "pod-1")
        .env_remove("KCONC_BROKERS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new(common::example_binary("service"))
        .arg("--list")
        .env("KCONC_INSTANCEID", "pod-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did you mean KCONC_INSTANCE_ID"),
        "{}",
        stderr(&out)
    );
}

/// A new user sends messages to a service on the embedded broker without
/// writing a producer: `--embedded-address-file` holds the cluster's
/// address while it runs (and is gone after), the log names it in one line,
/// and `produce` sends `KEY=VALUE` messages there, which the service handles.
#[test]
fn produce_sends_to_a_service_on_the_embedded_broker() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("kconc-produce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("address");
    let _ = std::fs::remove_file(&file);
    let mut child = Command::new(common::example_binary("service"))
        .args(["--embedded-address-file", file.to_str().unwrap()])
        .env_remove("KCONC_BROKERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the service exited");
        assert!(Instant::now() < deadline, "no address file within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let address = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    // The log says the same in one line.
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("embedded broker at") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the log ended");
    }
    assert!(line.contains(&format!("embedded broker at {address} ")), "{line}");
    assert!(
        line.contains(&format!("--brokers {address} produce TOPIC KEY=VALUE")),
        "{line}"
    );

    let sent = service(&[
        "--brokers",
        &address,
        "produce",
        "events",
        "cust-1=hello",
        "cust-2={\"a\":1}",
        "keyless",
    ]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(
        stdout(&sent).starts_with("sent 3 messages to `events` ("),
        "{}",
        stdout(&sent)
    );
    // The service prints a line per event it handled.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut handled = Vec::new();
    while handled.len() < 3 {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "the service's output ended: {handled:?}"
        );
        handled.push(l);
    }
    let mut described: Vec<&str> = handled.iter().map(|l| l.split(": ").nth(1).unwrap().trim()).collect();
    described.sort_unstable();
    assert_eq!(
        described,
        ["key <no key>, 7 bytes", "key cust-1, 5 bytes", "key cust-2, 7 bytes"]
    );

    // A topic the cluster does not have, and the embedded broker itself, are refused.
    let missing = service(&["produce", "--brokers", &address, "nosuch", "x"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains(&format!("topic `nosuch` does not exist on the cluster at {address}")),
        "{}",
        stderr(&missing)
    );
    let embedded = service(&["produce", "events", "x"]);
    assert_eq!(embedded.status.code(), Some(1));
    assert!(
        stderr(&embedded).contains("--embedded-address-file"),
        "{}",
        stderr(&embedded)
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!file.exists(), "the address file outlived the cluster");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flag that does not exist exits 2 with the usage and the flag probably
/// meant, as the README says.
#[test]
fn a_misspelt_flag_names_the_one_meant() {
    let out = service(&["--brokrs", "localhost:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a similar argument exists: '--brokers'"),
        "{}",
        stderr(&out)
    );
}

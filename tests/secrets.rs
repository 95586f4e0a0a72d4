//! A secret given to the generated `main` in any layer (config file,
//! environment variable, flag) never appears in `--help`, `--list` or the
//! logs, even at debug level with librdkafka's configuration dump on. Runs
//! the `service` example as a process, the way a user runs their program.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FILE_SECRET: &str = "file-secret-5f1c";
const ENV_SECRET: &str = "env-secret-9a2e";
const FLAG_SECRET: &str = "flag-secret-33d7";

fn config_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kconc-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client.properties");
    std::fs::write(&path, format!("sasl.username = svc\nsasl.password = {FILE_SECRET}\n")).unwrap();
    path
}

fn service(bin: &PathBuf, file: &PathBuf, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(file)
        .args(["--property", &format!("ssl.key.password={FLAG_SECRET}")])
        .args(args)
        .env("KCONC_RDKAFKA_SSL_KEYSTORE_PASSWORD", ENV_SECRET)
        .env_remove("KCONC_BROKERS")
        .env_remove("RUST_LOG");
    cmd
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [FILE_SECRET, ENV_SECRET, FLAG_SECRET] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_secret_in_help_list_or_debug_logs() {
    let bin = common::example_binary("service");
    let file = config_file();

    let help = service(&bin, &file, &["--help"]).output().unwrap();
    assert!(help.status.success());
    let help = text(&help);
    assert!(help.contains("--config"), "{help}");
    assert_no_secret("--help", &help);

    let list = service(&bin, &file, &["--list"]).output().unwrap();
    let list = text(&list);
    assert!(list.contains("service::log_event"), "{list}");
    assert_no_secret("--list", &list);

    // A full run at debug level, librdkafka dumping its configuration, until
    // the consumer is up; then SIGTERM.
    let mut child = service(
        &bin,
        &file,
        &[
            "--brokers",
            "embedded",
            "--log",
            "debug",
            "--property",
            "debug=conf,generic,security",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|pipe| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut signalled = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if !signalled && line.contains("partitions assigned") {
                    let ok = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                    assert!(ok.success());
                    signalled = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the service did not get an assignment and stop within 60 s:\n{log}");
            }
        }
    }
    for r in readers {
        r.join().unwrap();
    }
    let status = child.wait().unwrap();
    assert!(signalled, "never saw an assignment:\n{log}");
    assert!(status.success(), "exit {status}:\n{log}");
    // The dump really happened (else this test could not fail).
    assert!(
        ["sasl.password", "ssl.key.password", "ssl.keystore.password"]
            .iter()
            .all(|p| log.contains(&format!("{p} = [redacted]"))),
        "librdkafka's configuration dump is missing:\n{log}"
    );
    assert_no_secret("the logs", &log);
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

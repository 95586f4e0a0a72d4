//! The status page at `/` of the HTTP endpoint, loaded in a real browser:
//! headless Chromium (Debian's `chromium`, which `scripts/setup` installs;
//! the test fails, never skips, without it) renders the page of a running
//! app, the test checks what it shows, and keeps a screenshot at
//! `target/status-page.png`.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kconc_runtime::{Message, OnError, Subscriber};

/// Chromium's path: the test fails when it is not installed.
fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("the status page test needs headless Chromium: `bash scripts/setup` installs Debian's `chromium`");
}

/// Runs headless Chromium with `args` on `url` (a profile of its own, no
/// network of its own beyond the page), waiting at most a minute; returns
/// what it printed.
fn run_chromium(args: &[&str], url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("kconc-chromium-{}", std::process::id()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap()
}

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the target directory")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_subscriber_its_partitions_and_why_in_a_real_browser() {
    let (orders, payments) = ("status-orders", "status-payments");
    let cluster = cluster(orders, 4);
    cluster.create_topic(payments, 2).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let archive = Subscriber::new("archive", [orders], "g-archive", |_m: Message| async {});
    let post = Subscriber::new("post", [payments], "g-post", |m: Message| async move {
        if m.partition() == 1 && m.offset() == 5 {
            Err("the ledger refuses <this> one")
        } else {
            Ok(())
        }
    })
    .retries(1)
    .backoff(Duration::from_millis(10))
    .on_error(OnError::Stop);
    let app = test_app(&bootstrap)
        .http("127.0.0.1:0")
        .subscriber(archive)
        .subscriber(post)
        .start_in_test_mode()
        .unwrap();
    let addr = app.http_addr().unwrap();
    let order_ends = produce(&bootstrap, orders, 4, 200, 20);
    produce(&bootstrap, payments, 2, 40, 4);

    // The state to show: every order committed to its partition's end, and
    // the payment partition stopped.
    let rows: Vec<String> = order_ends
        .iter()
        .enumerate()
        .map(|(p, end)| format!("<td class=\"l\">{orders}</td><td>{p}</td><td>{end}</td><td>{end}</td><td>0</td>"))
        .collect();
    let stopped =
        "partition status-payments[1] stopped at offset 5 by the error policy: the ledger refuses &lt;this&gt; one";
    let deadline = Instant::now() + DEADLINE;
    let html = loop {
        let (code, html) = get(addr, "/").await.expect("the page is served");
        assert_eq!(code, 200, "{html}");
        if rows.iter().all(|r| html.contains(r)) && html.contains(stopped) && html.contains("<polyline") {
            break html;
        }
        assert!(Instant::now() < deadline, "the page never showed the state:\n{html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Nothing is fetched from elsewhere: no script, stylesheet or font of
    // another origin; it reloads itself.
    for outside in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "@import",
        "url(",
        "@font-face",
    ] {
        assert!(!html.contains(outside), "the page loads `{outside}`");
    }
    assert!(html.contains("<meta http-equiv=\"refresh\""), "it reloads itself");

    // As Chromium renders it.
    let url = format!("http://{addr}/");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run_chromium(&["--dump-dom"], &url)
    })
    .await
    .unwrap();
    for want in [
        // Each subscriber, its state and group.
        "<section class=\"subscriber\" id=\"sub-archive\"><h2>archive <span class=\"badge ok\">ready</span>",
        "<section class=\"subscriber\" id=\"sub-post\"><h2>post <span class=\"badge warn\">not ready</span>",
        "group <b>g-archive</b>",
        // Why the other is not ready, as health says it (escaped).
        stopped,
        // Its counters: the failed message's two attempts, its retry.
        "<div><b>2</b><span>failed attempts</span></div>",
        "<div><b>1</b><span>retried</span></div>",
        "<div><b>1</b><span>stopped partitions</span></div>",
        "<div><b>200</b><span>handled</span></div>",
        // The charts.
        "handled per second",
        "failed attempts per second",
        "lag (messages behind, all partitions)",
        "<polyline",
        // The stopped partition's row.
        "stopped at offset 5: the ledger refuses &lt;this&gt; one",
    ] {
        assert!(dom.contains(want), "the rendered page lacks {want:?}:\n{dom}");
    }
    for row in &rows {
        assert!(dom.contains(row), "the rendered page lacks the row {row:?}:\n{dom}");
    }

    let shot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            run_chromium(
                &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1500"],
                &url,
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "a page, not a blank: {} bytes", png.len());
    app.shutdown().await;
}

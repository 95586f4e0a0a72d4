//! `--rebalance`: how long a rebalance stops consumption, under each group
//! protocol. A topic of 64 partitions gets a steady 1,280 msg/s (20 per
//! partition per second, each record's timestamp its send time); two
//! kconc members consume it in one group; then a third joins, and later
//! leaves (a graceful shutdown). For each of the two events:
//!
//! - **back after**: the time from the event (the third member's `start`,
//!   or the start of its shutdown) until every partition has had a record
//!   sent at or after the event handled, that is until every partition is
//!   consumed again and has caught up with the event;
//! - **waiting, over the steady state**: the most messages sent and not
//!   yet handled during that time, minus the median of the second before
//!   the event (what is in flight anyway);
//! - **handled twice**: records handled more than once in the whole run
//!   (a revoke or leave that did not commit what was handled).
//!
//! Every record sent is checked handled at the end of each run.
//!
//! On the embedded cluster each run gets a cluster of its own and runs each
//! configuration of [`CONFIGS`]; with `--brokers` (Tansu has no consumer
//! protocol) the classic ones only.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use kconc_runtime::rdkafka::ClientConfig;
use kconc_runtime::{App, EmbeddedCluster, GroupProtocol, Message, StatsHandle, Subscriber};

const PARTITIONS: i32 = 64;
/// Records per second per partition.
const PER_PARTITION: u64 = 20;
/// How long to wait for an event's end before the run fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(300);

/// One configuration measured.
struct Config {
    label: &'static str,
    protocol: GroupProtocol,
    /// The client's `session.timeout.ms` (classic), or `None` for its
    /// default.
    session_ms: Option<u32>,
    /// The broker's consumer-group session and heartbeat interval
    /// (consumer; the embedded cluster only).
    broker_timing: Option<(Duration, Duration)>,
}

/// Each protocol with the defaults a new user gets (the client's for
/// classic, Kafka's broker defaults for consumer), then with the shorter
/// timings tests use.
const CONFIGS: [Config; 4] = [
    Config {
        label: "classic, client defaults (session 45 s, heartbeat 3 s)",
        protocol: GroupProtocol::Classic,
        session_ms: None,
        broker_timing: None,
    },
    Config {
        label: "classic, session.timeout.ms = 10 s",
        protocol: GroupProtocol::Classic,
        session_ms: Some(10_000),
        broker_timing: None,
    },
    Config {
        label: "consumer, Kafka's broker defaults (session 45 s, heartbeat 5 s)",
        protocol: GroupProtocol::Consumer,
        session_ms: None,
        broker_timing: Some((Duration::from_secs(45), Duration::from_secs(5))),
    },
    Config {
        label: "consumer, heartbeat 1 s (session 10 s)",
        protocol: GroupProtocol::Consumer,
        session_ms: None,
        broker_timing: Some((Duration::from_secs(10), Duration::from_secs(1))),
    },
];

/// What the handlers of every member record.
struct Track {
    /// Records sent at or after this (ms since the epoch) count for the
    /// current event; `i64::MAX` between events.
    event_ms: AtomicI64,
    /// Per partition: when (ms since the epoch) the first record of the
    /// event was handled, 0 while none has been.
    back: Vec<AtomicI64>,
    /// Distinct records handled.
    handled: AtomicU64,
    /// Records handled again.
    twice: AtomicU64,
    seen: Mutex<HashSet<(i32, i64)>>,
}

impl Track {
    fn new() -> Self {
        Self {
            event_ms: AtomicI64::new(i64::MAX),
            back: (0..PARTITIONS).map(|_| AtomicI64::new(0)).collect(),
            handled: AtomicU64::new(0),
            twice: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn handle(&self, m: &Message) {
        let first = self
            .seen
            .lock()
            .map(|mut seen| seen.insert((m.partition(), m.offset())))
            .unwrap_or(true);
        if first {
            self.handled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.twice.fetch_add(1, Ordering::Relaxed);
        }
        let sent = m.timestamp().unwrap_or(0);
        if sent >= self.event_ms.load(Ordering::Relaxed) {
            if let Some(back) = usize::try_from(m.partition()).ok().and_then(|p| self.back.get(p)) {
                let _ = back.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// Starts an event at `at` (ms since the epoch).
    fn begin(&self, at: i64) {
        for back in &self.back {
            back.store(0, Ordering::Relaxed);
        }
        self.event_ms.store(at, Ordering::Relaxed);
    }

    /// When the last partition was back, once all are.
    fn all_back(&self) -> Option<i64> {
        self.back.iter().try_fold(0, |last, b| match b.load(Ordering::Relaxed) {
            0 => None,
            t => Some(last.max(t)),
        })
    }

    fn partitions_back(&self) -> usize {
        self.back.iter().filter(|b| b.load(Ordering::Relaxed) != 0).count()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Sends `PER_PARTITION` records a second to each partition of `topic`
/// until `stop`, round robin, each stamped with its send time; counts them
/// in `sent` (once delivered: a record the broker refused is not waited
/// for).
fn produce(bootstrap: &str, topic: &str, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let rate = PER_PARTITION * u64::try_from(PARTITIONS).unwrap_or(0);
    let started = Instant::now();
    let mut n: u64 = 0;
    let payload = crate::payload(0);
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            let partition = i32::try_from(n % PARTITIONS as u64).unwrap_or(0);
            let key = format!("k{n}");
            let record = BaseRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload(&payload)
                .timestamp(now_ms());
            match producer.send(record) {
                Ok(()) => {
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
        producer.poll(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())
}

/// One event's figures.
#[derive(Clone, Copy, Default)]
struct Event {
    /// From the event to the assignment settled.
    settled: Duration,
    /// From the event to every partition consumed again after that.
    back_after: Duration,
    waiting_over_steady: u64,
}

/// The figures of one run of one configuration.
struct Run {
    join: Event,
    leave: Event,
    /// How long the leaving member's shutdown took.
    shutdown: Duration,
    twice: u64,
}

/// A member: an app of one subscriber in `group`.
fn member(
    bootstrap: &str,
    topic: &str,
    group: &str,
    config: &Config,
    track: &'static Track,
) -> Result<kconc_runtime::Running, String> {
    let sub = Subscriber::new("rebalance", [topic], group, move |m: Message| async move {
        track.handle(&m);
    });
    let mut app = App::new()
        .brokers(bootstrap)
        .group_protocol(config.protocol)
        .subscriber(sub);
    if let Some(ms) = config.session_ms {
        app = app.property("session.timeout.ms", ms.to_string());
    }
    app.start().map_err(|e| e.to_string())
}

/// Whether `members` together hold every partition, each once, and
/// `must_hold` (the joining member) holds some.
fn settled(members: &[&StatsHandle], must_hold: Option<&StatsHandle>) -> bool {
    let mut held = HashSet::new();
    let mut each_once = true;
    for m in members {
        for (_, p) in m.assigned_partitions() {
            each_once &= held.insert(p);
        }
    }
    each_once && held.len() == PARTITIONS as usize && must_hold.is_none_or(|m| !m.assigned_partitions().is_empty())
}

/// Waits for the event begun at `at` to end: the assignment settled (see
/// [`settled`]), then every partition consumed again from a record sent
/// after that; samples the messages waiting meanwhile. Fails after
/// `EVENT_DEADLINE`.
async fn wait_back(
    track: &Track,
    sent: &AtomicU64,
    at: i64,
    steady: u64,
    mut settled_now: impl FnMut() -> bool,
    what: &str,
) -> Result<Event, String> {
    let deadline = Instant::now() + EVENT_DEADLINE;
    let mut most = 0;
    let mut settled_at = None;
    loop {
        let waiting = sent
            .load(Ordering::Relaxed)
            .saturating_sub(track.handled.load(Ordering::Relaxed));
        most = most.max(waiting);
        if settled_at.is_none() && settled_now() {
            let t = now_ms();
            settled_at = Some(t);
            track.begin(t);
        }
        if let (Some(settled), Some(last)) = (settled_at, track.all_back()) {
            let since = |t: i64| Duration::from_millis(u64::try_from(t - at).unwrap_or(0));
            return Ok(Event {
                settled: since(settled),
                back_after: since(last),
                waiting_over_steady: most.saturating_sub(steady),
            });
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: {} after {EVENT_DEADLINE:?}",
                match settled_at {
                    None => "the assignment never settled".to_owned(),
                    Some(_) => format!(
                        "only {} of {PARTITIONS} partitions consumed again",
                        track.partitions_back()
                    ),
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn handle(app: &kconc_runtime::Running) -> Result<StatsHandle, String> {
    app.stats_handle("rebalance")
        .ok_or_else(|| "no subscriber `rebalance`".to_owned())
}

/// The median of the messages waiting over the next second.
async fn steady_waiting(track: &Track, sent: &AtomicU64) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..100 {
        samples.push(
            sent.load(Ordering::Relaxed)
                .saturating_sub(track.handled.load(Ordering::Relaxed)),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

async fn one_run(bootstrap: &str, topic: &str, config: &Config) -> Result<Run, String> {
    let track: &'static Track = Box::leak(Box::new(Track::new()));
    let group = format!("{topic}-group");
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let producer = {
        let (bootstrap, topic, stop, sent) = (bootstrap.to_owned(), topic.to_owned(), stop.clone(), sent.clone());
        std::thread::spawn(move || produce(&bootstrap, &topic, stop, sent))
    };
    let result = async {
        // Two members, started together (one join), consuming every
        // partition.
        let a = member(bootstrap, topic, &group, config, track)?;
        let b = member(bootstrap, topic, &group, config, track)?;
        let (ha, hb) = (handle(&a)?, handle(&b)?);
        let at = now_ms();
        track.begin(at);
        wait_back(
            track,
            &sent,
            at,
            0,
            || settled(&[&ha, &hb], Some(&hb)),
            "the first two members",
        )
        .await?;

        let steady = steady_waiting(track, &sent).await;
        let at = now_ms();
        track.begin(at);
        let c = member(bootstrap, topic, &group, config, track)?;
        let hc = handle(&c)?;
        let join = wait_back(
            track,
            &sent,
            at,
            steady,
            || settled(&[&ha, &hb, &hc], Some(&hc)),
            "the third member's join",
        )
        .await?;

        let steady = steady_waiting(track, &sent).await;
        let at = now_ms();
        track.begin(at);
        let leaving = tokio::spawn(async move {
            let started = Instant::now();
            c.shutdown().await;
            started.elapsed()
        });
        let leave = wait_back(
            track,
            &sent,
            at,
            steady,
            || settled(&[&ha, &hb], None),
            "the third member's leave",
        )
        .await?;
        let shutdown = leaving.await.map_err(|e| e.to_string())?;

        stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let (s, h) = (sent.load(Ordering::Relaxed), track.handled.load(Ordering::Relaxed));
            if producer.is_finished() && h >= s {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("only {h} of {s} records sent were handled"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.shutdown().await;
        b.shutdown().await;
        Ok(Run {
            join,
            leave,
            shutdown,
            twice: track.twice.load(Ordering::Relaxed),
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let produced = tokio::task::block_in_place(|| producer.join());
    match produced {
        Ok(Ok(())) => result,
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the producer thread panicked".into()),
    }
}

pub(crate) async fn run(brokers: Option<&str>, runs: usize) -> Result<(), String> {
    println!(
        "rebalance: {PARTITIONS} partitions, {PER_PARTITION} msg/s each; 2 members, a 3rd joins, then leaves; on {}; {runs} run(s) each, median (min-max)",
        brokers.unwrap_or("the embedded mock cluster (a cluster per run)")
    );
    for config in &CONFIGS {
        if brokers.is_some() && config.protocol == GroupProtocol::Consumer {
            continue;
        }
        let mut all = Vec::new();
        for _ in 0..runs {
            let topic = format!("bench-rebalance-{}", crate::low_rate::stamp());
            let cluster;
            let bootstrap = match brokers {
                Some(b) => {
                    crate::low_rate::create_topic_of(b, &topic, PARTITIONS).await?;
                    b.to_owned()
                }
                None => {
                    cluster = EmbeddedCluster::start(1).map_err(|e| e.to_string())?;
                    cluster.create_topic(&topic, PARTITIONS).map_err(|e| e.to_string())?;
                    if let Some((session, heartbeat)) = config.broker_timing {
                        cluster.consumer_group_timing(session, heartbeat);
                    }
                    cluster.bootstrap_servers().to_owned()
                }
            };
            all.push(
                one_run(&bootstrap, &topic, config)
                    .await
                    .map_err(|e| format!("{}: {e}", config.label))?,
            );
        }
        let med = |v: Vec<f64>| crate::median(v);
        println!("  {}", config.label);
        for (what, f) in [
            ("join ", (|r: &Run| r.join) as fn(&Run) -> Event),
            ("leave", |r: &Run| r.leave),
        ] {
            let (s, b, w) = (
                med(all.iter().map(|r| f(r).settled.as_secs_f64()).collect()),
                med(all.iter().map(|r| f(r).back_after.as_secs_f64()).collect()),
                med(all.iter().map(|r| f(r).waiting_over_steady as f64).collect()),
            );
            println!(
                "    {what}: settled after {:.2} s ({:.2}-{:.2}), all consumed again after {:.2} s ({:.2}-{:.2}), waiting over steady {:.0} ({:.0}-{:.0})",
                s.0, s.1, s.2, b.0, b.1, b.2, w.0, w.1, w.2
            );
        }
        let down = med(all.iter().map(|r| r.shutdown.as_secs_f64()).collect());
        println!(
            "    the leaving member's shutdown: {:.2} s ({:.2}-{:.2})",
            down.0, down.1, down.2
        );
        let twice: u64 = all.iter().map(|r| r.twice).sum();
        println!("    handled twice: {twice} in all runs; every record sent was handled");
    }
    Ok(())
}

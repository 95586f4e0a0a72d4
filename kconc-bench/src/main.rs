//! Throughput of kconc next to a hand-written rdkafka loop, in one run, on
//! the embedded (in-process mock) cluster or a real one.
//!
//! Run with: `cargo run --release -p kconc-bench` (add `-- --smoke` for a
//! seconds-long check, `-- --brokers HOST:PORT` for a real cluster).
//!
//! Workloads (topic of 8 partitions, keys `k{i % 1000}`, ~220-byte JSON):
//! - W-noop: the handler decodes the JSON and returns; baseline: a raw
//!   `BaseConsumer` loop that decodes the same JSON and stores offsets.
//! - W-io: the handler awaits a 10 ms timer; bound: `concurrency / 10 ms`.
//! - W-key: W-io with `ordering = key` over 1,000 keys; baseline: W-io
//!   (unordered) at the same concurrency, in the same run.
//! - W-key-100: `ordering = key`, 100 keys, concurrency 100, 5 ms handler;
//!   bound: `min(keys, concurrency) / 5 ms` = 20,000 msg/s.
//! - W-partition: `ordering = partition`, 10 ms handler; bound:
//!   `partitions / 10 ms` = 800 msg/s.
//!
//! `--only NAME[,NAME..]` runs some of them: noop, io, key, key100, partition.
//! `--low-rate` measures the offset commit requests at 8 partitions x 10
//! msg/s (see `low_rate`).
//! `--batch` runs W-batch alone (see `batch`): a bulk-write handler costing
//! 5 ms per call + 10 us per message at concurrency 4, with `max_batch` 1,
//! 10, 100 and 500 and the single-message handler; bound: `concurrency * n
//! / (5 ms + 10 us * n)` for a mean batch size `n` (`--svg FILE` draws it).
//! `--rebalance` measures a member's join and leave under each group
//! protocol, 64 partitions (see `rebalance`).
//! `--otel` (built with `--features otel`) exports kconc's spans and
//! metrics over OTLP as the `OTEL_*` variables say; `--otlp-sink ADDR`
//! runs a receiver for it (`127.0.0.1:4318` by default) in another shell.
//! `--gate` checks kconc's instructions and allocations per message over
//! the raw loop's against `kconc-bench/gate.txt` (see `gate`; `--record`
//! writes it); run it in release, as `scripts/gate` does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kconc_runtime::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use kconc_runtime::rdkafka::message::BorrowedMessage;
use kconc_runtime::rdkafka::{ClientConfig, Message as _};
use kconc_runtime::testing::TestProducer;
use kconc_runtime::{App, EmbeddedCluster, FirstPoll, Message, OrderingMode as Mode, Subscriber};

mod batch;
mod db;
mod gate;
mod low_rate;
mod metadata;
mod rebalance;
mod separate;

const PARTITIONS: i32 = 8;

/// Counts heap allocations, so a run can report allocations per message.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(crate) static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
    /// Those made on a kconc poll thread (a thread named `kconc-poll-..`).
    pub(crate) static POLL_THREAD_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    std::thread_local! {
        /// Whether this thread is a poll thread (once seen, for good), and
        /// how many allocations until its name is looked at again (a
        /// thread's name is set as it starts, possibly after it allocated).
        static POLL_THREAD: std::cell::Cell<(bool, u16)> = const { std::cell::Cell::new((false, 0)) };
    }

    /// Whether the calling thread's name starts with `kconc-poll`.
    fn named_poll_thread() -> bool {
        let mut name = [0u8; 16];
        // SAFETY: the calling thread's own handle and a buffer of the
        // length given (Linux's names are at most 16 bytes with the NUL).
        let ok = unsafe { libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), name.len()) } == 0;
        ok && name.starts_with(b"kconc-poll")
    }

    /// Counts one allocation (allocates nothing itself).
    fn count() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let on_poll_thread = POLL_THREAD
            .try_with(|state| match state.get() {
                (true, _) => true,
                (false, 0) => {
                    let yes = named_poll_thread();
                    state.set((yes, 1_023));
                    yes
                }
                (false, n) => {
                    state.set((false, n - 1));
                    false
                }
            })
            .unwrap_or(false);
        if on_poll_thread {
            POLL_THREAD_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // the only addition is counting it (relaxed counters, a thread-local
    // flag, and now and then the thread's name, none of which allocates).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: as for `alloc` and `dealloc`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

/// The whole process's CPU time, context switches and allocation count at
/// one moment (the embedded broker runs in this process too, for the raw
/// loop and for kconc alike, so differences between the two are the
/// framework's).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu: Duration,
    /// Voluntary and involuntary context switches of every thread.
    switches: u64,
    allocations: u64,
}

impl Usage {
    fn now() -> Self {
        let (cpu, switches) = rusage();
        Self {
            cpu,
            switches,
            allocations: counting::ALLOCATIONS.load(Ordering::Relaxed),
        }
    }

    fn since(self, start: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(start.cpu),
            switches: self.switches.saturating_sub(start.switches),
            allocations: self.allocations.saturating_sub(start.allocations),
        }
    }
}

/// User and system CPU time of the whole process (every thread, ended ones
/// included, to the microsecond) and its context switches, from
/// `getrusage(RUSAGE_SELF)`.
#[allow(unsafe_code)]
fn rusage() -> (Duration, u64) {
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is valid for writes; RUSAGE_SELF is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } != 0 {
        return (Duration::ZERO, 0);
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let switches = (r.ru_nvcsw + r.ru_nivcsw) as u64;
    (tv(r.ru_utime) + tv(r.ru_stime), switches)
}

/// The peak resident set size of this process so far, in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    customer: String,
    sku: String,
    quantity: u32,
    price_cents: u64,
    currency: String,
    note: String,
}

struct Options {
    brokers: Option<String>,
    noop_messages: usize,
    io_messages: usize,
    runs: usize,
    io_concurrency: Vec<usize>,
    key100_messages: usize,
    partition_messages: usize,
    only: Vec<String>,
    svg: Option<String>,
    /// `--separate`: W-noop with each consumer in its own process.
    separate: bool,
    /// `--separate --w1`: W1 instead (10 ms handlers, concurrency 100,
    /// against the raw spawn-and-semaphore loop; 20,000 messages unless
    /// `--messages` says).
    w1: bool,
    /// `--messages` was given.
    messages_given: bool,
    /// `--exit`: time from SIGTERM (with nothing in flight) to exit.
    exit: bool,
    /// `--smoke`: every mode, briefly (the test suite's run).
    smoke: bool,
    /// `--metadata`: the cost of the finished offsets in commit metadata.
    metadata: bool,
    /// `--low-rate`: the commit requests at 8 partitions x 10 msg/s.
    low_rate: bool,
    /// `--batch`: W-batch, batch handlers against the single-message one.
    batch: bool,
    /// `--rebalance`: how long a member's join and leave stop
    /// consumption, under each group protocol.
    rebalance: bool,
    /// `--db`: W-db; `--postgres URL` adds PostgreSQL to it.
    db: bool,
    /// `--gate`: instructions and allocations per message against the
    /// recorded figures; `--record` records them instead.
    gate: bool,
    record: bool,
    /// `--gate --vs OTHER_BUILD`: kconc of this build against another's.
    vs: Option<std::path::PathBuf>,
    postgres: Option<String>,
    /// `--separate --broker-pid PID`: the CPU the broker's process (an
    /// external one, such as Tansu) spent serving each child.
    broker_pid: Option<u32>,
}

impl Options {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

const WORKLOADS: &[&str] = &["noop", "io", "key", "key100", "partition"];

fn options() -> Result<Options, String> {
    let mut o = Options {
        brokers: None,
        // librdkafka's mock cluster keeps at most 5 MB or 100,000 records per
        // partition and silently trims the oldest: 200,000 of these records
        // over 8 partitions would exceed it, so the default stays below.
        noop_messages: 100_000,
        io_messages: 20_000,
        runs: 3,
        io_concurrency: vec![10, 100, 1_000],
        key100_messages: 40_000,
        partition_messages: 2_400,
        only: Vec::new(),
        svg: None,
        separate: false,
        w1: false,
        messages_given: false,
        exit: false,
        smoke: false,
        metadata: false,
        low_rate: false,
        batch: false,
        rebalance: false,
        db: false,
        gate: false,
        record: false,
        vs: None,
        broker_pid: None,
        postgres: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => {
                o.smoke = true;
                o.noop_messages = 2_000;
                o.io_messages = 500;
                o.runs = 1;
                o.io_concurrency = vec![100];
                o.key100_messages = 1_000;
                o.partition_messages = 200;
            }
            "--only" => {
                let v = args.next().ok_or("--only needs a value")?;
                for w in v.split(',') {
                    if !WORKLOADS.contains(&w) {
                        return Err(format!(
                            "--only: unknown workload `{w}` (one of {})",
                            WORKLOADS.join(", ")
                        ));
                    }
                    o.only.push(w.to_owned());
                }
            }
            "--first-poll" => {
                let v: FirstPoll = args
                    .next()
                    .ok_or("--first-poll needs a value")?
                    .parse()
                    .map_err(|e: kconc_runtime::SettingError| e.to_string())?;
                let _ = FIRST_POLL.set(v);
            }
            "--svg" => o.svg = Some(args.next().ok_or("--svg needs a file")?),
            "--separate" => o.separate = true,
            "--w1" => o.w1 = true,
            "--exit" => o.exit = true,
            "--metadata" => o.metadata = true,
            "--low-rate" => o.low_rate = true,
            "--batch" => o.batch = true,
            "--rebalance" => o.rebalance = true,
            "--db" => o.db = true,
            "--gate" => o.gate = true,
            // Installed in `main` (before anything runs).
            "--otel" if cfg!(feature = "otel") => {}
            "--otel" => {
                return Err(
                    "--otel needs the otel feature: cargo run --release -p kconc-bench --features otel -- --otel"
                        .into(),
                )
            }
            "--record" => o.record = true,
            "--vs" => o.vs = Some(args.next().ok_or("--vs needs a kconc-bench binary")?.into()),
            "--postgres" => o.postgres = Some(args.next().ok_or("--postgres needs a URL")?),
            "--broker-pid" => {
                o.broker_pid = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--broker-pid needs the broker's process id")?,
                );
            }
            "--brokers" => o.brokers = Some(args.next().ok_or("--brokers needs a value")?),
            "--runs" => {
                o.runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--runs needs a number")?
            }
            "--messages" => {
                o.noop_messages = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--messages needs a number")?;
                o.messages_given = true;
            }
            "--help" | "-h" => {
                println!(
                    "usage: kconc-bench [--smoke] [--brokers HOST:PORT] [--runs N] [--messages N] [--only {}] [--first-poll auto|poll_thread|worker] [--svg FILE] [--separate [--w1] [--broker-pid PID]] [--exit] [--metadata] [--low-rate] [--batch] [--rebalance] [--db [--postgres URL]] [--otel]",
                    WORKLOADS.join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(o)
}

fn payload(i: usize) -> String {
    let order = Order {
        id: i as u64,
        customer: format!("customer-{:06}", i % 50_000),
        sku: format!("SKU-{:08}", i % 9_973),
        quantity: (i % 7) as u32 + 1,
        price_cents: (i as u64 * 37) % 100_000,
        currency: "EUR".into(),
        note: "deliver to the back door, ring twice, leave with the neighbour if nobody answers".into(),
    };
    serde_json::to_string(&order).unwrap_or_default()
}

fn produce(bootstrap: &str, topic: &str, n: usize, keys: usize) -> Result<(), String> {
    let producer = TestProducer::with_properties(bootstrap, &[("linger.ms", "20"), ("batch.num.messages", "10000")])
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        let (key, value) = (format!("k{}", i % keys), payload(i));
        producer
            .send(
                topic,
                Some((i % PARTITIONS as usize) as i32),
                Some(key.as_bytes()),
                value.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
    }
    producer
        .flush(Duration::from_secs(60))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The raw loops' consumer: offsets stored by hand after each message and
/// committed by librdkafka every 5 s, as a hand-written service would.
fn raw_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in props("KCONC_BENCH_RAW_PROPS") {
        config.set(k, v);
    }
    config
}

/// `key=value` pairs from a comma-separated environment variable.
fn props(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Messages per second of a raw rdkafka loop reading `n` messages.
fn raw_loop(bootstrap: &str, topic: &str, group: &str, n: usize) -> Result<(f64, Usage), String> {
    let consumer: BaseConsumer = raw_config(bootstrap, group).create().map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let mut run = RawRun::default();
    run.read(&consumer, n, None)?;
    Ok(run.finish())
}

/// What a raw loop counts, and the work it does per message.
#[derive(Default)]
struct RawRun {
    seen: usize,
    start: Option<(Instant, Usage)>,
}

impl RawRun {
    /// Decodes the JSON and stores the offset, as kconc's handler decodes
    /// it and kconc stores (commits) offsets.
    fn handle<X: ConsumerContext, C: Consumer<X>>(&mut self, consumer: &C, m: &BorrowedMessage<'_>) {
        self.start.get_or_insert_with(|| (Instant::now(), Usage::now()));
        let order: Result<Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
        std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
        let _ = consumer.store_offset_from_message(m);
        self.seen += 1;
    }

    /// Reads and handles messages until `n` are seen (failing after 300 s),
    /// committing asynchronously every `commit_every` if given.
    fn read<X: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<X>,
        n: usize,
        commit_every: Option<usize>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.seen < n {
            if Instant::now() > deadline {
                return Err(format!("raw loop: only {} of {n} messages", self.seen));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    self.handle(consumer, &m);
                    if commit_every.is_some_and(|every| self.seen.is_multiple_of(every)) {
                        let _ = consumer.commit_consumer_state(CommitMode::Async);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {}
            }
        }
        Ok(())
    }

    /// Messages per second and usage from the first message to now.
    fn finish(self) -> (f64, Usage) {
        let (took, usage) = self.start.map_or((Duration::ZERO, Usage::default()), |(t, u)| {
            (t.elapsed(), Usage::now().since(u))
        });
        (self.seen as f64 / took.as_secs_f64(), usage)
    }
}

/// The baseline: a hand-written async loop over rdkafka's
/// `StreamConsumer` (what a tokio service would write without kconc), doing
/// the same work as [`raw_loop`].
async fn stream_loop(bootstrap: &str, topic: &str, group: &str, n: usize) -> Result<(f64, Usage), String> {
    let consumer: StreamConsumer = raw_config(bootstrap, group).create().map_err(|e| e.to_string())?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    let mut run = RawRun::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    while run.seen < n {
        let m = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .map_err(|_| format!("stream loop: only {} of {n} messages", run.seen))?
            .map_err(|e| e.to_string())?;
        run.handle(&consumer, &m);
    }
    Ok(run.finish())
}

/// What one kconc run measured.
struct Measured {
    rate: f64,
    commits: u64,
    max_waiting: u64,
    /// Times a partition was paused at `max_uncommitted`.
    window_pauses: u64,
    /// Mean time a handler took, as the handler measured it.
    latency: Duration,
    /// Mean time a key stayed idle between two of its messages.
    key_gap: Duration,
    /// CPU and allocations from the first message to the last.
    usage: Usage,
    /// The consumer's last librdkafka statistics, when asked for.
    librdkafka_statistics: Option<String>,
}

impl Measured {
    /// The Little's-law bound with the handler's measured latency instead
    /// of the nominal one (tokio's timer rounds sleeps up).
    fn measured_bound(&self, concurrency: usize) -> f64 {
        concurrency as f64 / self.latency.as_secs_f64().max(1e-9)
    }
}

/// What a run's handlers report: messages handled, time spent waiting in
/// the handler (W-io's measured latency), and when the first one began.
#[derive(Default)]
struct Probe {
    count: AtomicUsize,
    busy_ns: std::sync::atomic::AtomicU64,
    first: std::sync::OnceLock<(Instant, Usage)>,
    /// When each key's last handler ended (per partition: key ordering is
    /// per key within a partition), and the time keys spent idle between
    /// one of their messages and the next (handlers that wait only).
    key_ends: std::sync::Mutex<std::collections::HashMap<(i32, Vec<u8>), Instant>>,
    key_gap_ns: std::sync::atomic::AtomicU64,
    key_gaps: AtomicUsize,
}

impl Probe {
    /// Counts the time `lane` stayed idle since its last message ended.
    fn lane_starts(&self, lane: &(i32, Vec<u8>), now: Instant) {
        let ended = self.key_ends.lock().ok().and_then(|ends| ends.get(lane).copied());
        if let Some(gap) = ended.and_then(|ended| now.checked_duration_since(ended)) {
            self.key_gap_ns.fetch_add(gap.as_nanos() as u64, Ordering::Relaxed);
            self.key_gaps.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lane_ends(&self, lane: (i32, Vec<u8>)) {
        if let Ok(mut ends) = self.key_ends.lock() {
            ends.insert(lane, Instant::now());
        }
    }
}

/// Where kconc runs handlers' first polls in this run (`--first-poll`).
static FIRST_POLL: std::sync::OnceLock<FirstPoll> = std::sync::OnceLock::new();

/// The W-noop handler takes `Json<Order>` (the extractor) instead of the
/// `Message` (`--child kconc-json`, for `--gate`): the record is lent to the
/// extractor, not copied.
static JSON_HANDLER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Messages per second of kconc reading `n` messages with `concurrency` and
/// `ordering`, the handler sleeping `work` (or only decoding when zero).
async fn framework(
    bootstrap: &str,
    topic: &str,
    group: String,
    n: usize,
    mode: (usize, Mode),
    work: Duration,
) -> Result<Measured, String> {
    framework_with(bootstrap, topic, group, n, mode, work, None).await
}

/// [`framework`], and with `statistics` (an interval) librdkafka's
/// statistics of the consumer, read once its last commits are made.
async fn framework_with(
    bootstrap: &str,
    topic: &str,
    group: String,
    n: usize,
    (concurrency, ordering): (usize, Mode),
    work: Duration,
    statistics: Option<Duration>,
) -> Result<Measured, String> {
    // Leaked (a few bytes per run) so the handler borrows them for free
    // instead of cloning three `Arc`s per message, which the raw loop
    // does not pay either.
    let probe: &'static Probe = Box::leak(Box::default());
    let sub = Subscriber::new("bench", [topic], group.clone(), move |m: Message| async move {
        probe.first.get_or_init(|| (Instant::now(), Usage::now()));
        let order: Result<Order, _> = serde_json::from_slice(m.payload().unwrap_or_default());
        std::hint::black_box(order.map(|o| o.id).unwrap_or(0));
        if !work.is_zero() {
            let started = Instant::now();
            // Its lane (a key within a partition), under key ordering only.
            let lane = (ordering == Mode::Key).then(|| (m.partition(), m.key().unwrap_or_default().to_vec()));
            if let Some(lane) = &lane {
                probe.lane_starts(lane, started);
            }
            tokio::time::sleep(work).await;
            probe
                .busy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if let Some(lane) = lane {
                probe.lane_ends(lane);
            }
        }
        probe.count.fetch_add(1, Ordering::Relaxed);
    })
    .concurrency(concurrency)
    .ordering(ordering)
    .first_poll(FIRST_POLL.get().copied().unwrap_or_default());
    let sub = if JSON_HANDLER.load(Ordering::Relaxed) {
        // The same work for W-noop: the JSON decoded (by the extractor),
        // counted. No lanes or sleeps: W-noop only.
        let json = kconc_runtime::Handler::from_extractor(move |order: kconc_runtime::Json<Order>| async move {
            probe.first.get_or_init(|| (Instant::now(), Usage::now()));
            std::hint::black_box(order.id);
            probe.count.fetch_add(1, Ordering::Relaxed);
        });
        Subscriber::from_handler("bench", [topic], group.clone(), json)
            .concurrency(concurrency)
            .ordering(ordering)
            .first_poll(FIRST_POLL.get().copied().unwrap_or_default())
    } else {
        sub
    };
    // `KCONC_BENCH_SET="commit_batch_size=1000,.."`: settings to try, as
    // `--set` takes them.
    let mut sub = sub;
    for kv in std::env::var("KCONC_BENCH_SET").unwrap_or_default().split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            sub.set(k.trim(), v.trim()).map_err(|e| e.to_string())?;
        }
    }
    let mut app = App::new().brokers(bootstrap).subscriber(sub);
    // `KCONC_BENCH_PROPS="queued.max.messages.kbytes=1024,.."`: librdkafka
    // properties to try on kconc's consumer (`KCONC_BENCH_RAW_PROPS` for
    // the raw loops').
    for (k, v) in props("KCONC_BENCH_PROPS") {
        app = app.property(k, v);
    }
    if let Some(every) = statistics {
        app = app.property("statistics.interval.ms", every.as_millis().to_string());
    }
    let running = app.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while probe.count.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "kconc: only {} of {n} messages",
                probe.count.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (took, usage) = probe.first.get().map_or((Duration::ZERO, Usage::default()), |(t, u)| {
        (t.elapsed(), Usage::now().since(*u))
    });
    let librdkafka_statistics = match statistics {
        Some(every) => {
            // Past the commits of the last messages (the commit interval is
            // 1 s), and one more statistics report after them.
            tokio::time::sleep(Duration::from_secs(1) + 3 * every).await;
            running.stats_handle("bench").and_then(|h| h.librdkafka_statistics())
        }
        None => None,
    };
    let stats = running.total_stats();
    running.shutdown().await;
    Ok(Measured {
        librdkafka_statistics,
        rate: n as f64 / took.as_secs_f64(),
        commits: stats.commits,
        max_waiting: stats.max_waiting,
        window_pauses: stats.uncommitted_window_pauses,
        latency: Duration::from_nanos(probe.busy_ns.load(Ordering::Relaxed) / n.max(1) as u64),
        key_gap: Duration::from_nanos(
            probe.key_gap_ns.load(Ordering::Relaxed) / probe.key_gaps.load(Ordering::Relaxed).max(1) as u64,
        ),
        usage,
    })
}

/// Waits until `group` has committed every partition of `topic` to its
/// end, or fails (naming workload `what`) after `deadline`.
pub(crate) async fn wait_committed(
    bootstrap: &str,
    topic: &str,
    group: &str,
    deadline: Instant,
    what: &str,
) -> Result<(), String> {
    let ends = tokio::task::block_in_place(|| kconc_runtime::testing::end_offsets(bootstrap, topic, PARTITIONS))
        .map_err(|e| e.to_string())?;
    loop {
        let committed = tokio::task::block_in_place(|| {
            kconc_runtime::testing::committed_offsets(bootstrap, group, topic, PARTITIONS)
        })
        .map_err(|e| e.to_string())?;
        if committed.iter().zip(&ends).all(|(c, end)| c.is_some_and(|c| c >= *end)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not every offset committed: {committed:?} of {ends:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--otlp-sink ADDR`: an OTLP/HTTP receiver that only reads, for
    // `--otel` runs to export to (a process of its own: its CPU is not
    // kconc's).
    #[cfg(feature = "otel")]
    if args.get(1).map(String::as_str) == Some("--otlp-sink") {
        let addr = args.get(2).map_or("127.0.0.1:4318", String::as_str);
        match kconc_runtime::testing::OtlpReceiver::start(addr, false) {
            Ok(r) => eprintln!("OTLP sink on http://{}", r.addr()),
            Err(e) => {
                eprintln!("error: --otlp-sink {addr}: {e}");
                std::process::exit(1);
            }
        }
        loop {
            std::thread::park();
        }
    }
    // `--otel`: kconc's spans and metrics exported over OTLP as the OTEL_*
    // variables say (to `--otlp-sink` on localhost:4318 by default).
    #[cfg(feature = "otel")]
    let _otel = match args.iter().any(|a| a == "--otel") {
        false => None,
        true => match kconc_runtime::otel::init_from_env(Some("warn")) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
    };
    // `RUST_LOG=..`: kconc's log on stderr (none otherwise).
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = kconc_runtime::init_tracing_with(None);
    }
    let result = if args.get(1).map(String::as_str) == Some("--child") {
        separate::child(&args[2..]).await
    } else {
        run().await
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let o = options()?;
    let cluster;
    let bootstrap = match &o.brokers {
        Some(b) => b.clone(),
        None => {
            cluster = EmbeddedCluster::start(1).map_err(|e| e.to_string())?;
            cluster
                .create_topic("bench-noop", PARTITIONS)
                .map_err(|e| e.to_string())?;
            for topic in [
                "bench-io",
                "bench-key100",
                "bench-separate",
                "bench-separate-w1",
                "bench-low-rate",
            ] {
                cluster.create_topic(topic, PARTITIONS).map_err(|e| e.to_string())?;
            }
            for topic in batch::topics().chain(db::topics()).chain(gate::topics()) {
                cluster.create_topic(&topic, PARTITIONS).map_err(|e| e.to_string())?;
            }
            cluster.bootstrap_servers().to_owned()
        }
    };
    if o.metadata || o.smoke {
        tokio::task::block_in_place(|| metadata::run(&bootstrap, "bench-io"))?;
        if o.metadata {
            return Ok(());
        }
    }
    if o.low_rate || o.smoke {
        low_rate::run(&bootstrap, o.brokers.is_none(), if o.smoke { 3 } else { 20 }).await?;
        if o.low_rate {
            return Ok(());
        }
    }
    if o.db {
        let postgres = o
            .postgres
            .clone()
            .or_else(|| std::env::var("KCONC_BENCH_POSTGRES").ok());
        return db::run(&bootstrap, o.brokers.is_none(), postgres.as_deref()).await;
    }
    if o.rebalance {
        return rebalance::run(o.brokers.as_deref(), o.runs).await;
    }
    if o.batch {
        return batch::run(&bootstrap, o.brokers.is_none(), o.svg.as_deref()).await;
    }
    if o.gate {
        return tokio::task::block_in_place(|| gate::run(&bootstrap, o.record, o.vs.as_deref()));
    }
    if o.exit {
        return tokio::task::block_in_place(|| separate::exit_times(&bootstrap, 10_000, o.runs.max(5)));
    }
    if o.separate {
        let n = if o.w1 && !o.messages_given {
            20_000
        } else {
            o.noop_messages
        };
        return tokio::task::block_in_place(|| {
            separate::separate(&bootstrap, o.brokers.is_none(), n, o.runs, o.broker_pid, o.w1)
        });
    }
    let where_ = o.brokers.as_deref().unwrap_or("embedded mock cluster");
    println!(
        "kconc-bench on {where_}, {} run(s) each, median (min-max); kconc's handlers: first_poll = {}",
        o.runs,
        FIRST_POLL.get().copied().unwrap_or_default().as_str()
    );
    produce(&bootstrap, "bench-noop", o.noop_messages, 1_000)?;
    produce(&bootstrap, "bench-io", o.io_messages, 1_000)?;
    produce(&bootstrap, "bench-key100", o.key100_messages, 100)?;

    let mut chart = Chart::default();
    if o.wants("noop") {
        let (mut raw, mut stream, mut fw) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_use, mut stream_use, mut fw_use, mut commits) =
            (Usage::default(), Usage::default(), Usage::default(), 0);
        for run in 0..o.runs {
            let (rate, usage) = tokio::task::block_in_place(|| {
                raw_loop(&bootstrap, "bench-noop", &format!("raw-{run}"), o.noop_messages)
            })?;
            raw.push(rate);
            raw_use = usage;
            let (rate, usage) =
                stream_loop(&bootstrap, "bench-noop", &format!("stream-{run}"), o.noop_messages).await?;
            stream.push(rate);
            stream_use = usage;
            let m = framework(
                &bootstrap,
                "bench-noop",
                format!("fw-{run}"),
                o.noop_messages,
                (100, Mode::Unordered),
                Duration::ZERO,
            )
            .await?;
            fw.push(m.rate);
            fw_use = m.usage;
            commits = m.commits;
        }
        let (r, rmin, rmax) = median(raw);
        let (st, smin, smax) = median(stream);
        let (f, fmin, fmax) = median(fw);
        let n = o.noop_messages as f64;
        let per = |u: Usage| (u.cpu.as_secs_f64() * 1e6 / n, u.allocations as f64 / n);
        let ((raw_cpu, raw_alloc), (st_cpu, st_alloc), (fw_cpu, fw_alloc)) =
            (per(raw_use), per(stream_use), per(fw_use));
        println!(
            "W-noop       {:>6} msgs  raw BaseConsumer loop   {r:>9.0} msg/s ({rmin:.0}-{rmax:.0})  cpu {raw_cpu:.2} us/msg  allocs {raw_alloc:.1}/msg",
            o.noop_messages
        );
        println!(
            "W-noop       {:>6} msgs  raw StreamConsumer loop {st:>9.0} msg/s ({smin:.0}-{smax:.0})  ratio {:.2} of BaseConsumer  cpu {st_cpu:.2} us/msg  allocs {st_alloc:.1}/msg",
            o.noop_messages,
            st / r,
        );
        println!(
            "W-noop       {:>6} msgs  kconc c=100             {f:>9.0} msg/s ({fmin:.0}-{fmax:.0})  ratio {:.2} of BaseConsumer, {:.2} of StreamConsumer  cpu {fw_cpu:.2} us/msg  allocs {fw_alloc:.1}/msg (framework {:+.1} over BaseConsumer)  commits {commits}",
            o.noop_messages,
            f / r,
            f / st,
            fw_alloc - raw_alloc,
        );
        chart.noop = Some((r, st, f));
    }
    for &c in &o.io_concurrency {
        let bound = c as f64 / 0.010;
        let mut unordered = None;
        for (workload, ordering) in [("io", Mode::Unordered), ("key", Mode::Key)] {
            if !o.wants(workload) {
                continue;
            }
            let (rate, lo, hi, last) = series(&o, |run| {
                framework(
                    &bootstrap,
                    "bench-io",
                    format!("{workload}-{c}-{run}"),
                    o.io_messages,
                    (c, ordering),
                    Duration::from_millis(10),
                )
            })
            .await?;
            let label = if ordering == Mode::Key {
                "W-key 1000k "
            } else {
                "W-io        "
            };
            let vs_unordered =
                unordered.map_or(String::new(), |u: f64| format!("  ratio {:.2} of unordered", rate / u));
            println!(
                "{label} {:>6} msgs  kconc c={c:<5} {ordering:<9}  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}{vs_unordered}  commits {}  max_waiting {}  max_uncommitted pauses {}  handler {:.2} ms: ratio {:.2} of measured bound",
                o.io_messages,
                rate / bound,
                last.commits,
                last.max_waiting,
                last.window_pauses,
                last.latency.as_secs_f64() * 1e3,
                rate / last.measured_bound(c),
            );
            if ordering == Mode::Unordered {
                unordered = Some(rate);
                chart.io.push((c, rate, bound));
            } else {
                chart.key.push((c, rate));
            }
        }
    }
    if o.wants("key100") {
        // The same run unordered shows what the 5 ms timer itself allows
        // (tokio's timer rounds up to whole milliseconds).
        let bound = 100.0 / 0.005;
        let mut unordered = 0.0;
        for mode in [Mode::Unordered, Mode::Key] {
            let (rate, lo, hi, last) = series(&o, |run| {
                framework(
                    &bootstrap,
                    "bench-key100",
                    format!("key100-{mode}-{run}"),
                    o.key100_messages,
                    (100, mode),
                    Duration::from_millis(5),
                )
            })
            .await?;
            let vs = if mode == Mode::Key {
                // Each lane (a key within a partition) runs one message at
                // a time; the bench's keys and partitions make 200 lanes
                // for 100 slots, so at the bound a lane is idle half the
                // time, and much more than that means lanes starve.
                let (gap, took) = (last.key_gap.as_secs_f64(), last.latency.as_secs_f64());
                format!(
                    "  ratio {:.2} of unordered  a lane's idle time between its messages {:.2} ms ({:.1} % of its time)",
                    rate / unordered,
                    gap * 1e3,
                    100.0 * gap / (gap + took).max(f64::MIN_POSITIVE)
                )
            } else {
                unordered = rate;
                String::new()
            };
            println!(
                "W-key-100    {:>6} msgs  kconc c=100   {mode:<9}  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}{vs}  commits {}  max_waiting {}  handler {:.2} ms: ratio {:.2} of measured bound",
                o.key100_messages,
                rate / bound,
                last.commits,
                last.max_waiting,
                last.latency.as_secs_f64() * 1e3,
                rate / last.measured_bound(100),
            );
        }
    }
    if o.wants("partition") {
        let bound = f64::from(PARTITIONS) / 0.010;
        let (rate, lo, hi, last) = series(&o, |run| {
            framework(
                &bootstrap,
                "bench-io",
                format!("partition-{run}"),
                o.partition_messages,
                (100, Mode::Partition),
                Duration::from_millis(10),
            )
        })
        .await?;
        println!(
            "W-partition  {:>6} msgs  kconc c=100   partition  {rate:>9.0} msg/s ({lo:.0}-{hi:.0})  ratio {:.2} of bound {bound:.0}  commits {}  max_waiting {}  handler {:.2} ms: ratio {:.2} of measured bound",
            o.partition_messages,
            rate / bound,
            last.commits,
            last.max_waiting,
            last.latency.as_secs_f64() * 1e3,
            rate / last.measured_bound(PARTITIONS as usize),
        );
    }
    println!(
        "peak RSS of the whole process (broker included): {:.0} MB",
        peak_rss_mb()
    );
    if let Some(path) = &o.svg {
        std::fs::write(path, chart.svg()).map_err(|e| format!("{path}: {e}"))?;
        println!("chart written to {path}");
    }
    if o.smoke {
        // The separate-process and exit modes too, briefly, so that they
        // keep working.
        tokio::task::block_in_place(|| {
            separate::separate(&bootstrap, o.brokers.is_none(), o.noop_messages, 1, None, false)
        })?;
        tokio::task::block_in_place(|| separate::exit_times(&bootstrap, 1_000, 1))?;
    }
    Ok(())
}

/// What the chart shows, gathered during the run.
#[derive(Default)]
struct Chart {
    /// W-noop: raw BaseConsumer loop, raw StreamConsumer loop and kconc, msg/s.
    noop: Option<(f64, f64, f64)>,
    /// W-io: concurrency, kconc msg/s, bound.
    io: Vec<(usize, f64, f64)>,
    /// W-key (1,000 keys): concurrency, msg/s.
    key: Vec<(usize, f64)>,
}

impl Chart {
    /// Two panels: W-io throughput against concurrency (log-log; kconc,
    /// key ordering and the bound), and W-noop bars (raw loop and kconc).
    fn svg(&self) -> String {
        let mut out = String::from(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"320\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"760\" height=\"320\" fill=\"white\"/>\n",
        );
        // Left panel: x = log10(concurrency) over [1, 3], y = log10(msg/s) over [2, 5].
        let (x0, y0, w, h) = (60.0, 270.0, 380.0, 220.0);
        let px = |c: usize| x0 + ((c as f64).log10() - 1.0) / 2.0 * w;
        let py = |v: f64| y0 - ((v.max(100.0)).log10() - 2.0) / 3.0 * h;
        out += &format!(
            "<text x=\"{x0}\" y=\"30\" font-size=\"14\">W-io: 10 ms handler, msg/s against concurrency</text>\n"
        );
        out += &format!("<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"black\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>\n", x0 + w, y0 - h);
        for c in [10, 100, 1000] {
            out += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{c}</text>\n",
                px(c),
                y0 + 16.0
            );
        }
        for v in [100.0, 1_000.0, 10_000.0, 100_000.0] {
            out += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>\n",
                x0 - 6.0,
                py(v) + 4.0
            );
        }
        let line = |pts: Vec<(f64, f64)>, colour: &str, dash: &str| {
            let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let mut s = format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\n", d.join(" "));
            for (x, y) in pts {
                s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>\n");
            }
            s
        };
        out += &line(self.io.iter().map(|&(c, _, b)| (px(c), py(b))).collect(), "gray", "5,4");
        out += &line(self.io.iter().map(|&(c, r, _)| (px(c), py(r))).collect(), "#1f77b4", "");
        out += &line(
            self.key.iter().map(|&(c, r)| (px(c), py(r))).collect(),
            "#ff7f0e",
            "2,2",
        );
        for (i, (label, colour)) in [
            ("bound: concurrency / 10 ms", "gray"),
            ("kconc unordered", "#1f77b4"),
            ("kconc key (1,000 keys)", "#ff7f0e"),
        ]
        .iter()
        .enumerate()
        {
            let y = 50.0 + 16.0 * i as f64;
            out += &format!("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{label}</text>\n", x0 + 10.0, y - 4.0, x0 + 28.0, y);
        }
        // Right panel: W-noop bars.
        if let Some((raw, stream, fw)) = self.noop {
            let (bx, by, bh) = (510.0, 270.0, 220.0);
            let top = raw.max(stream).max(fw).max(1.0);
            out += &format!("<text x=\"{bx}\" y=\"30\" font-size=\"14\">W-noop: msg/s</text>\n");
            for (i, (label, v, colour)) in [
                ("BaseConsumer", raw, "gray"),
                ("StreamConsumer", stream, "#aaaaaa"),
                ("kconc", fw, "#1f77b4"),
            ]
            .iter()
            .enumerate()
            {
                let x = bx + 5.0 + 78.0 * i as f64;
                let hgt = v / top * bh * 0.9;
                out += &format!(
                    "<rect x=\"{x}\" y=\"{:.1}\" width=\"60\" height=\"{hgt:.1}\" fill=\"{colour}\"/>\n",
                    by - hgt
                );
                out += &format!(
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{label}</text>\n",
                    x + 30.0,
                    by + 16.0
                );
                out += &format!(
                    "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}k</text>\n",
                    x + 30.0,
                    by - hgt - 6.0,
                    v / 1000.0
                );
            }
            out += &format!(
                "<line x1=\"{bx}\" y1=\"{by}\" x2=\"{}\" y2=\"{by}\" stroke=\"black\"/>\n",
                bx + 220.0
            );
        }
        out += "</svg>\n";
        out
    }
}

/// Runs a workload `o.runs` times: median rate, min, max, and the last run.
async fn series<F, Fut>(o: &Options, mut one: F) -> Result<(f64, f64, f64, Measured), String>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Measured, String>>,
{
    let mut rates = Vec::new();
    let mut last = None;
    for run in 0..o.runs {
        let m = one(run).await?;
        rates.push(m.rate);
        last = Some(m);
    }
    let (m, lo, hi) = median(rates);
    let last = last.ok_or("no runs")?;
    Ok((m, lo, hi, last))
}

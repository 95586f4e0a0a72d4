//! The settings of a kconc subscriber, declared once, in [`settings!`].
//!
//! - The `#[subscriber]` attribute (`kconc-macros`) reads [`SETTINGS`]: it
//!   takes its options, their order and its "did you mean" hints from it,
//!   parses each option by its [`Kind`], and expands each to a call of the
//!   runtime builder's setter of the same name.
//! - The runtime (`kconc-runtime`) expands [`settings!`] into the
//!   subscriber's settings: their fields and defaults, `Debug`, the checks
//!   `App::start` makes, the builder's setters (documented with `doc`),
//!   `Subscriber::set` (what `--set` calls: each settable setting parsed
//!   from text by its kind and handed to the same setter), and the choices'
//!   names and parsing. `--set`'s keys and help come from [`SETTINGS`] too.
//! - The README's options table is [`readme_table`]; a test holds the
//!   README to it, and the attribute, `--set` and the defaults to the
//!   table.
//!
//! Adding a setting is its line in [`settings!`], its use in the engine
//! (`sub.settings.KEY`), and its test.

/// One setting of a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Its name: the attribute's option, the `--set NAME.KEY=..` key, and
    /// the builder's setter.
    pub key: &'static str,
    /// The `#[subscriber(..)]` attribute takes it.
    pub attribute: bool,
    /// `--set` takes it (settings fixed by the code, such as the topics or
    /// the group, are not).
    pub set: bool,
    /// Its default, as the README's options table writes it (a value in
    /// backticks, or words: "required", "none", a rule).
    pub default: &'static str,
    /// How its value is written and what the setter takes.
    pub kind: Kind,
    /// A valid value, as `--set` writes it (the attribute quotes it where
    /// it takes a string).
    pub example: &'static str,
    /// The attribute takes it as a string literal (else as an integer).
    pub quoted: bool,
    /// What it means, in a few words (`--set`'s help, the docs).
    pub meaning: &'static str,
    /// What the value is, for the attribute's errors ("must be at least 1
    /// (the number of handlers that may run at once)"); for a `Special`
    /// setting `--set` takes, the values it takes. May be empty.
    pub what: &'static str,
    /// What it does, for the README's options table (its first paragraph,
    /// one line) and the builder setter's documentation (all of it).
    pub doc: &'static str,
}

/// How a setting's value is written, and what its setter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read by the attribute's own code (topics, group, name, crate path,
    /// `on_error`); `--set` parses it with the setter's type's `FromStr`.
    Special,
    /// A whole number from 1; the setter takes a `usize`.
    AtLeastOne,
    /// A whole number from 0; the setter takes a `u32`.
    WholeNumber,
    /// A duration (`"500ms"`, `"2s"`, `"1m"`); the setter takes a `Duration`.
    Duration,
    /// A duration longer than zero.
    LongerThanZero,
    /// A duration longer than zero, which `--set` may also turn off
    /// (`none`, `off`); the setter takes an `Option<Duration>`.
    Timeout,
    /// A non-empty string; the setter takes a `String`.
    Text,
    /// One of several names, each a variant of the runtime's type `ty`
    /// (which `--set` parses with its `FromStr`).
    Choice {
        /// The runtime type, as `__private` re-exports it.
        ty: &'static str,
        /// (the name written, the variant).
        values: &'static [(&'static str, &'static str)],
        /// What the attribute's error says after an unknown name.
        explain: &'static str,
    },
}

/// The table itself, handed to `$callback!` as one
/// `{ key: .., setter: .., kind: .., value: (TYPE = DEFAULT) | (), attribute: yes|no, set: yes|no, default: .., example: .., quoted: .., meaning: .., what: .., doc: .. }`
/// group per setting, in the order the docs list them. `value` is the
/// field the runtime keeps it in and its default (empty for the settings
/// that are not a field of their own: the topics, the group, the name, the
/// crate path, and `dead_letter`, a shorthand of `on_error`).
#[macro_export]
macro_rules! settings {
    ($callback:ident) => {
        $callback! {
            { key: "topic", setter: topic, kind: Special, value: (), attribute: yes, set: no,
              default: r#"required, or `topics`"#, example: "orders", quoted: true,
              meaning: "the topic to consume", what: "",
              doc: r#"the topic to consume"# }
            { key: "topics", setter: topics, kind: Special, value: (), attribute: yes, set: no,
              default: r#""#, example: r#"["a", "b"]"#, quoted: false,
              meaning: "several topics, one consumer group", what: "",
              doc: r#"several topics, one consumer group (not with `topic`)"# }
            { key: "group", setter: group, kind: Special, value: (), attribute: yes, set: no,
              default: r#"required"#, example: "billing", quoted: true,
              meaning: "the consumer group", what: "",
              doc: r#"consumer group; `--group-prefix` is prepended at run time"# }
            { key: "concurrency", setter: concurrency, kind: AtLeastOne, value: (usize = 10), attribute: yes, set: yes,
              default: r#"`10`"#, example: "20", quoted: false,
              meaning: "handlers running at once",
              what: "the number of handlers that may run at once",
              doc: r#"handlers running at once for this subscriber"# }
            { key: "ordering", setter: ordering,
              kind: Choice(OrderingMode: "unordered" => Unordered, "key" => Key, "partition" => Partition;
                "use `ordering = \"unordered\"` (the default), `\"key\"` (same key one at a time, in offset order) or `\"partition\"` (each partition one at a time)"),
              value: (OrderingMode = OrderingMode::Unordered), attribute: yes, set: yes,
              default: r#"`"unordered"`"#, example: "key", quoted: true,
              meaning: "unordered, key or partition", what: "",
              doc: r#"how much order handlers keep (guarantee 4)"# }
            { key: "first_poll", setter: first_poll,
              kind: Choice(FirstPoll: "worker" => Worker, "poll_thread" => PollThread, "auto" => Auto;
                "use `first_poll = \"worker\"` (the default: handlers run on the tokio workers), `\"poll_thread\"` (the poll thread runs each handler up to its first wait; for short, non-blocking handlers only) or `\"auto\"` (the poll thread does so while first polls stay short)"),
              value: (FirstPoll = FirstPoll::Worker), attribute: yes, set: yes,
              default: r#"`"worker"`"#, example: "worker", quoted: true,
              meaning: "where handlers run: worker, poll_thread or auto", what: "",
              doc: r#"where handlers run: on the tokio workers, or their first poll on the poll thread (an opt-in for short, non-blocking handlers only)"# }
            { key: "max_buffered", setter: max_buffered, kind: AtLeastOne, value: (Derived = Derived::default()), attribute: yes, set: yes,
              default: r#"`2 * concurrency` (`2 * concurrency * max_batch` for batch handlers), at least 16"#, example: "64", quoted: false,
              meaning: "fetched messages waiting to start, at most",
              what: "how many fetched messages may wait for a handler slot",
              doc: "fetched messages waiting to start (retries included), at most (guarantee 3)\n\n\
                    When the bound is reached, reading stops while polling goes on. In `key` and `partition` \
                    ordering a partition also stops being read (is paused) when the messages it has waiting \
                    behind busy keys reach its share of the bound (`max_buffered / assigned partitions`), so \
                    one backed-up partition cannot fill the buffer and stall the others." }
            { key: "max_uncommitted", setter: max_uncommitted, kind: AtLeastOne, value: (usize = 10_000), attribute: yes, set: yes,
              default: r#"`10000`"#, example: "1000", quoted: false,
              meaning: "offsets of a partition read past its last commit, at most",
              what: "how many offsets of a partition may be read past its last committed offset",
              doc: "offsets of a partition read past its last committed offset, at most (guarantee 3)\n\n\
                    A partition at the bound is paused (not read, while polling goes on) until its commits \
                    catch up. It bounds, per partition, the memory of what finished above a message that has \
                    not (a stuck handler, a long retry), and what is handled again after a crash, a lost \
                    assignment or a stretch of failing commits." }
            { key: "handler_timeout", setter: handler_timeout, kind: Timeout, value: (Option<Duration> = None), attribute: yes, set: yes,
              default: r#"none"#, example: "30s", quoted: true,
              meaning: "how long a handler may run before its message fails",
              what: "how long a handler may run before its message fails",
              doc: "a handler running longer is dropped and its message fails (retried, then `on_error`); \
                    with `reply`, the wait for the reply's acknowledgement counts (a timeout there says so, \
                    and a retry runs the handler again)\n\n\
                    The handler is cancelled at its next `.await`; a handler that blocks its thread without \
                    awaiting cannot be cut off. `None` turns it off." }
            { key: "max_batch", setter: max_batch, kind: AtLeastOne, value: (usize = 100), attribute: yes, set: yes,
              default: r#"`100`"#, example: "500", quoted: false,
              meaning: "messages in one call of a batch handler, at most",
              what: "how many messages one call of a batch handler may get",
              doc: "messages one call of a batch handler gets, at most (batch handlers only: those taking `Batch<..>`)\n\n\
                    A batch is what has been fetched of one partition (one lane of the ordering mode) when a \
                    slot is free, with no waiting for more; `concurrency` counts batches." }
            { key: "max_batch_bytes", setter: max_batch_bytes, kind: AtLeastOne, value: (usize = 1_048_576), attribute: yes, set: yes,
              default: r#"`1048576`"#, example: "262144", quoted: false,
              meaning: "key and payload bytes in one call of a batch handler, at most",
              what: "how many bytes of keys and payloads one call of a batch handler may get",
              doc: "bytes of keys and payloads one call of a batch handler gets, at most (batch handlers only); \
                    a larger message comes in a batch of its own" }
            { key: "batch_wait", setter: batch_wait, kind: Duration, value: (Duration = Duration::ZERO),
              attribute: yes, set: yes, default: r#"`"0ms"`"#, example: "20ms", quoted: true,
              meaning: "how long a batch waits to fill, at most",
              what: "how long a batch handler's batch may wait for more messages",
              doc: "how long a partition's fetched messages wait for more to fill a batch, at most (batch handlers \
                    only); `0ms` (the default) starts a batch with whatever has been fetched when a slot is free\n\n\
                    A partition's messages start as a batch once `max_batch` of them have been read, or once the \
                    first of them has waited `batch_wait`; retries and the end of an assignment do not wait \
                    longer than that either. It trades latency for fewer, larger calls when messages trickle in." }
            { key: "commit_batch_size", setter: commit_batch_size, kind: AtLeastOne, value: (usize = 100), attribute: yes, set: yes,
              default: r#"`100`"#, example: "100", quoted: false,
              meaning: "commit after this many finished messages",
              what: "how many finished messages trigger a commit",
              doc: r#"commit after this many finished messages..."# }
            { key: "commit_interval", setter: commit_interval, kind: LongerThanZero, value: (Duration = Duration::from_secs(1)),
              attribute: yes, set: yes, default: r#"`"1s"`"#, example: "1s", quoted: true,
              meaning: "or at least this often",
              what: "how often finished offsets are committed",
              doc: r#"...or at least this often (a partition that goes idle is committed at once: within a tenth of it, at most about 0.2 s)"# }
            { key: "commit_metadata", setter: commit_metadata,
              kind: Choice(CommitMetadata: "finished" => Finished, "none" => None;
                "use `commit_metadata = \"finished\"` (the default: commits record the finished offsets above the committed one, and a partition's next owner skips them) or `\"none\"` (offsets only)"),
              value: (CommitMetadata = CommitMetadata::Finished), attribute: yes, set: yes,
              default: r#"`"finished"`"#, example: "none", quoted: true,
              meaning: "finished (record finished offsets above the commit) or none", what: "",
              doc: r#"what a commit writes into the offset's metadata: the finished offsets above it, which the partition's next owner skips (guarantee 1), or nothing"# }
            { key: "store", setter: store,
              kind: Choice(OffsetStore: "kafka" => Kafka, "sql" => Sql;
                "use `store = \"sql\"` (exactly once into a database: the handler takes a `Tx<Sqlite>` or `Tx<Postgres>`, and kconc records each finished offset in the same transaction as the handler's writes), or leave it out (offsets are committed to Kafka only)"),
              value: (OffsetStore = OffsetStore::Kafka), attribute: yes, set: no,
              default: r#"`"kafka"`"#, example: "sql", quoted: true,
              meaning: "kafka, or sql (exactly once into a database through a `Tx` argument)", what: "",
              doc: "where finished offsets are kept: in Kafka's commits only, or (`sql`) also in the handler's database, in the \
                    same transaction as its writes (\"Exactly once into a database\" in the README)\n\n\
                    With `sql` the handler takes a `Tx<Sqlite>` (or `Tx<Postgres>`, feature `postgres`) from the app's \
                    `sqlx` pool (a state), and writes through it. When it returns `Ok`, kconc adds the message's offset \
                    to its table `kconc_offsets` and commits the transaction; when it fails, nothing of it is \
                    written. On assignment the partition's finished offsets are read from the database and skipped: \
                    a message whose writes were committed is never handled again, and none is skipped." }
            { key: "instance_id", setter: instance_id, kind: Text, value: (Option<String> = None), attribute: yes, set: yes,
              default: r#"none"#, example: "pod-3", quoted: true,
              meaning: "static group membership: group.instance.id is this, a dash and the subscriber's name", what: "",
              doc: "static group membership (\"Static membership\" in the README); usually set at run time with `--instance-id`\n\n\
                    librdkafka's `group.instance.id` is set to `\"{id}-{name}\"` (the subscriber's name, so \
                    several subscribers of one process stay distinct). A member that restarts within \
                    `session.timeout.ms` gets its partitions back without a rebalance of the others; the \
                    trade-off is that a member that is really gone holds its partitions, unread, until the \
                    session times out. Use a name that stays with the instance across restarts (a pod name \
                    in a StatefulSet, a host name) and is unique in the group: two live members with one id \
                    fence each other. `--instance-id` and `KCONC_INSTANCE_ID` set it for every subscriber of \
                    a program." }
            { key: "group_protocol", setter: group_protocol,
              kind: Choice(GroupProtocol: "classic" => Classic, "consumer" => Consumer;
                "use `group_protocol = \"classic\"` (the default: the classic rebalance protocol) or `\"consumer\"` (KIP-848: the broker assigns partitions; Kafka 4.0 or later)"),
              value: (GroupProtocol = GroupProtocol::Classic), attribute: yes, set: yes,
              default: r#"`"classic"`"#, example: "consumer", quoted: true,
              meaning: "classic, or consumer (KIP-848: the broker assigns partitions)", what: "",
              doc: "the consumer group protocol: `classic`, or `consumer` (KIP-848; \"Group protocols\" in the README)\n\n\
                    Under `consumer` the broker computes the assignment (`group.remote.assignor` chooses its \
                    assignor) and rebalances are incremental: a member joining or leaving does not stop the \
                    others. The session timeout and the heartbeat interval are the broker's settings \
                    (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`): \
                    `session.timeout.ms`, `heartbeat.interval.ms`, `partition.assignment.strategy` and \
                    `group.protocol.type` are refused. `--group-protocol` and `KCONC_GROUP_PROTOCOL` set it \
                    for every subscriber of a program." }
            { key: "shutdown_timeout", setter: shutdown_timeout, kind: Duration, value: (Duration = Duration::from_secs(20)),
              attribute: yes, set: yes, default: r#"`"20s"`"#, example: "20s", quoted: true,
              meaning: "how long shutdown waits for running handlers", what: "",
              doc: r#"how long shutdown waits for running handlers"# }
            { key: "revoke_timeout", setter: revoke_timeout, kind: LongerThanZero, value: (Duration = Duration::from_secs(10)),
              attribute: yes, set: yes, default: r#"`"10s"`"#, example: "10s", quoted: true,
              meaning: "how long a revoke waits for its handlers and commit",
              what: "how long a revoke waits for the revoked partitions' handlers and commit",
              doc: "how long a revoke waits for the revoked partitions' handlers and their commit\n\n\
                    Keep it well below `max.poll.interval.ms`." }
            { key: "retries", setter: retries, kind: WholeNumber, value: (u32 = 0), attribute: yes, set: yes,
              default: r#"`0`"#, example: "3", quoted: false,
              meaning: "retries of a failed message before on_error", what: "",
              doc: "retries of a failed message before `on_error`\n\n\
                    The waits are `backoff` doubled on each retry up to `max_backoff`, with jitter. A waiting \
                    retry holds no handler slot; its offset is not committed until it finishes, and in `key` \
                    or `partition` ordering the messages behind it with its key (or partition) wait for it." }
            { key: "backoff", setter: backoff, kind: Duration, value: (Duration = Duration::from_millis(100)),
              attribute: yes, set: yes, default: r#"`"100ms"`"#, example: "100ms", quoted: true,
              meaning: "wait before the first retry", what: "",
              doc: r#"wait before the first retry, doubled on each, with jitter"# }
            { key: "max_backoff", setter: max_backoff, kind: Duration, value: (Duration = Duration::from_secs(10)),
              attribute: yes, set: yes, default: r#"`"10s"`"#, example: "10s", quoted: true,
              meaning: "longest wait between retries", what: "",
              doc: r#"longest wait between retries"# }
            { key: "on_error", setter: on_error, kind: Special, value: (OnError = OnError::Skip), attribute: yes, set: yes,
              default: r#"`"skip"`"#, example: "stop", quoted: true,
              meaning: "after the last attempt: skip, stop, or dead_letter where a dead_letter topic is set",
              what: "`skip`/`stop`, or `dead_letter` where a dead-letter topic is set",
              doc: r#"after the last attempt: `"skip"` (commit and go on), `"stop"` (stop the partition) or `"dead_letter"` (publish it to the `dead_letter` topic)"# }
            { key: "dead_letter", setter: dead_letter, kind: Text, value: (), attribute: yes, set: yes,
              default: r#""#, example: "orders.dlq", quoted: true,
              meaning: "the dead-letter topic", what: "",
              doc: r#"the dead-letter topic (implies `on_error = "dead_letter"`)"# }
            { key: "reply", setter: reply, kind: Text, value: (Option<String> = None), attribute: yes, set: no,
              default: r#"none"#, example: "orders.billed", quoted: true,
              meaning: "publish what the handler returns to this topic, before its offset is committed", what: "",
              doc: "publish what the handler returns to this topic; its offset is committed only after every reply is acknowledged\n\n\
                    In the attribute it also makes the handler's return value the replies; a handler built \
                    in code sends with `Context::send_json`." }
            { key: "name", setter: name, kind: Special, value: (), attribute: yes, set: no,
              default: r#"the function's path"#, example: "billing", quoted: true,
              meaning: "the subscriber's name", what: "",
              doc: r#"the subscriber's name in logs, metrics, `--list`, `--only` and `--set`; two subscribers with one name fail start-up, naming both functions"# }
            { key: "crate", setter: krate, kind: Special, value: (), attribute: yes, set: no,
              default: r#"`"kconc_runtime"`"#, example: "kconc_runtime", quoted: true,
              meaning: "where the runtime is, if renamed", what: "",
              doc: r#"where the runtime is, if you renamed the dependency"# }
        }
    };
}

/// Turns the table into [`SETTINGS`].
macro_rules! declare {
    ($({ key: $key:literal, setter: $setter:ident,
         kind: $kind:ident $(($ty:ident: $($name:literal => $variant:ident),*; $explain:literal))?,
         value: ($($value:tt)*), attribute: $attribute:ident, set: $set:ident, default: $default:literal,
         example: $example:literal, quoted: $quoted:literal, meaning: $meaning:literal, what: $what:literal,
         doc: $doc:literal })*) => {
        /// Every setting, in the order the docs list them.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            key: $key,
            attribute: declare!(@yes $attribute),
            set: declare!(@yes $set),
            default: $default,
            kind: declare!(@kind $kind $(($ty: $($name => $variant),*; $explain))?),
            example: $example,
            quoted: $quoted,
            meaning: $meaning,
            what: $what,
            doc: $doc,
        }),*];
    };
    (@yes yes) => { true };
    (@yes no) => { false };
    (@kind Choice($ty:ident: $($name:literal => $variant:ident),*; $explain:literal)) => {
        Kind::Choice {
            ty: stringify!($ty),
            values: &[$(($name, stringify!($variant))),*],
            explain: $explain,
        }
    };
    (@kind $kind:ident) => { Kind::$kind };
}

settings!(declare);

/// The options of the `#[subscriber]` attribute, in order.
pub fn attribute_options() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.attribute)
}

/// The keys `--set` takes, in order.
pub fn settable() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.set)
}

/// The setting named `key`.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

impl Setting {
    /// What the README's options table writes in its "value" column.
    pub fn value_text(&self) -> String {
        match self.kind {
            Kind::AtLeastOne => "integer >= 1".to_owned(),
            Kind::WholeNumber => "integer >= 0".to_owned(),
            Kind::Duration | Kind::Timeout => "duration".to_owned(),
            Kind::LongerThanZero => "duration > 0".to_owned(),
            Kind::Choice { values, .. } => {
                let names: Vec<String> = values.iter().map(|(name, _)| format!("`\"{name}\"`")).collect();
                names.join(", ")
            }
            Kind::Special | Kind::Text => format!("`{}`", self.written_example()),
        }
    }

    /// Its example as the attribute writes it: in quotes where it takes a
    /// string (`"orders"`), else as is (`20`, `["a", "b"]`).
    pub fn written_example(&self) -> String {
        if self.quoted {
            format!("\"{}\"", self.example)
        } else {
            self.example.to_owned()
        }
    }

    /// The first paragraph of [`Setting::doc`]: the README's "meaning".
    pub fn summary(&self) -> &'static str {
        self.doc.split("\n\n").next().unwrap_or_default()
    }
}

/// The README's table of the attribute's options, made from [`SETTINGS`]:
/// the header and a row per option.
pub fn readme_table() -> String {
    let mut table = String::from("| option | value | default | meaning |\n|---|---|---|---|\n");
    for s in attribute_options() {
        let row = format!(
            "| `{}` | {} | {} | {} |\n",
            s.key,
            s.value_text(),
            s.default,
            s.summary()
        );
        // An empty cell is `| |`.
        table.push_str(&row.replace("|  |", "| |"));
    }
    table
}

/// The README's list of the keys `--set` takes, each with the values it
/// takes where they are not just its kind's (`` `first_poll` (`worker`/`poll_thread`/`auto`) ``).
pub fn readme_set_keys() -> String {
    let items: Vec<String> = settable()
        .map(|s| {
            let values = match s.kind {
                Kind::Choice { values, .. } => {
                    let names: Vec<String> = values.iter().map(|(name, _)| format!("`{name}`")).collect();
                    names.join("/")
                }
                Kind::Timeout => "a duration, or `none`".to_owned(),
                Kind::LongerThanZero => "longer than zero".to_owned(),
                Kind::Special => s.what.to_owned(),
                _ => String::new(),
            };
            match values.as_str() {
                "" => format!("`{}`", s.key),
                values => format!("`{}` ({values})", s.key),
            }
        })
        .collect();
    items.join(", ")
}

/// The README's list of the options only the code sets (`--set` refuses them).
pub fn readme_attribute_only() -> String {
    let keys: Vec<String> = attribute_options()
        .filter(|s| !s.set)
        .map(|s| format!("`{}`", s.key))
        .collect();
    keys.join(", ")
}

/// A duration as every setting writes it: a whole number followed by `ms`,
/// `s` or `m` (`"500ms"`, `"2s"`, `"1m"`), in milliseconds; `None` for
/// anything else (`"1h"`, `"1.5s"`, `"2"`, a number too large).
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// The Levenshtein distance between `a` and `b`: how far a misspelt name
/// is from the one probably meant.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        for bad in [
            "1h",
            "2",
            "s",
            "1.5s",
            "5 s",
            "10 days",
            "99999999999999999999m",
            "-1s",
            "",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
        assert_eq!(parse_duration_ms("307445734561825860m"), None, "overflows");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("BROKER", "BROKERS"), 1);
        assert_eq!(edit_distance("", "ABC"), 3);
        assert_eq!(edit_distance("ABC", ""), 3);
        assert_eq!(edit_distance("LOG", "LOG"), 0);
        assert_eq!(edit_distance("KAFKA_", "RDKAFKA_"), 2);
        assert_eq!(edit_distance("retires", "retries"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// Each setting's summary fits a table cell, and a setting with a
    /// value of its own says what it is; the README's table has a row per
    /// attribute option.
    #[test]
    fn every_summary_is_one_cell() {
        for s in SETTINGS {
            let summary = s.summary();
            assert!(!summary.is_empty(), "`{}` has no doc", s.key);
            assert!(
                !summary.contains(['\n', '|']),
                "`{}`'s summary is not one cell: {summary}",
                s.key
            );
        }
        let table = readme_table();
        assert_eq!(table.lines().count(), 2 + attribute_options().count());
        assert!(
            table.contains("| `concurrency` | integer >= 1 | `10` | handlers running at once for this subscriber |\n")
        );
        assert!(
            table.contains("| `topics` | `[\"a\", \"b\"]` | | several topics"),
            "{table}"
        );
    }

    #[test]
    fn every_key_is_declared_once() {
        for (i, a) in SETTINGS.iter().enumerate() {
            assert!(
                SETTINGS[i + 1..].iter().all(|b| b.key != a.key),
                "`{}` is declared twice",
                a.key
            );
        }
    }
}

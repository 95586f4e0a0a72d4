//! The settings of a kconc subscriber, declared once, in [`settings!`].
//!
//! - The `#[subscriber]` attribute (`kconc-macros`) reads [`SETTINGS`]: it
//!   takes its options, their order and its "did you mean" hints from it,
//!   parses each option by its [`Kind`], and expands each to a call of the
//!   runtime builder's setter of the same name.
//! - The runtime (`kconc-runtime`) expands [`settings!`] into
//!   `Subscriber::set` (what `--set` calls): each settable setting is parsed
//!   from text by its kind and handed to the same setter. `--set`'s keys and
//!   help come from [`SETTINGS`] too.
//! - Tests hold the attribute, `--set` and the docs to the table.
//!
//! Adding a setting is its line in [`settings!`], a builder setter on
//! `Subscriber` that takes the kind's value, and its use in the engine.

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
    /// (the number of handlers that may run at once)"); may be empty.
    pub what: &'static str,
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
/// `{ key: .., setter: .., kind: .., attribute: yes|no, set: yes|no, default: .., example: .., quoted: .., meaning: .., what: .. }`
/// group per setting, in the order the docs list them.
#[macro_export]
macro_rules! settings {
    ($callback:ident) => {
        $callback! {
            { key: "topic", setter: topic, kind: Special, attribute: yes, set: no, default: r#"required, or `topics`"#,
              example: "orders", quoted: true, meaning: "the topic to consume", what: "" }
            { key: "topics", setter: topics, kind: Special, attribute: yes, set: no, default: r#""#,
              example: "", quoted: false, meaning: "several topics, one consumer group", what: "" }
            { key: "group", setter: group, kind: Special, attribute: yes, set: no, default: r#"required"#,
              example: "billing", quoted: true, meaning: "the consumer group", what: "" }
            { key: "concurrency", setter: concurrency, kind: AtLeastOne, attribute: yes, set: yes, default: r#"`10`"#,
              example: "20", quoted: false, meaning: "handlers running at once",
              what: "the number of handlers that may run at once" }
            { key: "ordering", setter: ordering,
              kind: Choice(OrderingMode: "unordered" => Unordered, "key" => Key, "partition" => Partition;
                "use `ordering = \"unordered\"` (the default), `\"key\"` (same key one at a time, in offset order) or `\"partition\"` (each partition one at a time)"),
              attribute: yes, set: yes, default: r#"`"unordered"`"#, example: "key", quoted: true, meaning: "unordered, key or partition", what: "" }
            { key: "first_poll", setter: first_poll,
              kind: Choice(FirstPoll: "worker" => Worker, "poll_thread" => PollThread, "auto" => Auto;
                "use `first_poll = \"worker\"` (the default: handlers run on the tokio workers), `\"poll_thread\"` (the poll thread runs each handler up to its first wait; for short, non-blocking handlers only) or `\"auto\"` (the poll thread does so while first polls stay short)"),
              attribute: yes, set: yes, default: r#"`"worker"`"#, example: "worker", quoted: true,
              meaning: "where handlers run: worker, poll_thread or auto", what: "" }
            { key: "max_buffered", setter: max_buffered, kind: AtLeastOne, attribute: yes, set: yes, default: r#"`2 * concurrency`, at least 16"#,
              example: "64", quoted: false, meaning: "fetched messages waiting to start, at most",
              what: "how many fetched messages may wait for a handler slot" }
            { key: "max_uncommitted", setter: max_uncommitted, kind: AtLeastOne, attribute: yes, set: yes, default: r#"`10000`"#,
              example: "1000", quoted: false, meaning: "offsets of a partition read past its last commit, at most",
              what: "how many offsets of a partition may be read past its last committed offset" }
            { key: "handler_timeout", setter: handler_timeout, kind: Timeout, attribute: yes, set: yes, default: r#"none"#,
              example: "30s", quoted: true, meaning: "how long a handler may run before its message fails",
              what: "how long a handler may run before its message fails" }
            { key: "commit_batch_size", setter: commit_batch_size, kind: AtLeastOne, attribute: yes, set: yes, default: r#"`100`"#,
              example: "100", quoted: false, meaning: "commit after this many finished messages",
              what: "how many finished messages trigger a commit" }
            { key: "commit_interval", setter: commit_interval, kind: LongerThanZero, attribute: yes, set: yes, default: r#"`"1s"`"#,
              example: "1s", quoted: true, meaning: "or at least this often",
              what: "how often finished offsets are committed" }
            { key: "commit_metadata", setter: commit_metadata,
              kind: Choice(CommitMetadata: "finished" => Finished, "none" => None;
                "use `commit_metadata = \"finished\"` (the default: commits record the finished offsets above the committed one, and a partition's next owner skips them) or `\"none\"` (offsets only)"),
              attribute: yes, set: yes, default: r#"`"finished"`"#, example: "none", quoted: true,
              meaning: "finished (record finished offsets above the commit) or none", what: "" }
            { key: "instance_id", setter: instance_id, kind: Text, attribute: yes, set: yes, default: r#"none"#,
              example: "pod-3", quoted: true,
              meaning: "static group membership: group.instance.id is this, a dash and the subscriber's name", what: "" }
            { key: "shutdown_timeout", setter: shutdown_timeout, kind: Duration, attribute: yes, set: yes, default: r#"`"20s"`"#,
              example: "20s", quoted: true, meaning: "how long shutdown waits for running handlers", what: "" }
            { key: "revoke_timeout", setter: revoke_timeout, kind: LongerThanZero, attribute: yes, set: yes, default: r#"`"10s"`"#,
              example: "10s", quoted: true, meaning: "how long a revoke waits for its handlers and commit",
              what: "how long a revoke waits for the revoked partitions' handlers and commit" }
            { key: "retries", setter: retries, kind: WholeNumber, attribute: yes, set: yes, default: r#"`0`"#,
              example: "3", quoted: false, meaning: "retries of a failed message before on_error", what: "" }
            { key: "backoff", setter: backoff, kind: Duration, attribute: yes, set: yes, default: r#"`"100ms"`"#,
              example: "100ms", quoted: true, meaning: "wait before the first retry", what: "" }
            { key: "max_backoff", setter: max_backoff, kind: Duration, attribute: yes, set: yes, default: r#"`"10s"`"#,
              example: "10s", quoted: true, meaning: "longest wait between retries", what: "" }
            { key: "on_error", setter: on_error, kind: Special, attribute: yes, set: yes, default: r#"`"skip"`"#,
              example: "stop", quoted: true,
              meaning: "after the last attempt: skip, stop, or dead_letter where a dead_letter topic is set", what: "" }
            { key: "dead_letter", setter: dead_letter, kind: Text, attribute: yes, set: yes, default: r#""#,
              example: "orders.dlq", quoted: true, meaning: "the dead-letter topic", what: "" }
            { key: "reply", setter: reply, kind: Text, attribute: yes, set: no, default: r#""#,
              example: "orders.billed", quoted: true,
              meaning: "publish what the handler returns to this topic, before its offset is committed", what: "" }
            { key: "name", setter: name, kind: Special, attribute: yes, set: no, default: r#"the function's path"#,
              example: "billing", quoted: true, meaning: "the subscriber's name", what: "" }
            { key: "crate", setter: krate, kind: Special, attribute: yes, set: no, default: r#"`"kconc_runtime"`"#,
              example: "kconc_runtime", quoted: true, meaning: "where the runtime is, if renamed", what: "" }
        }
    };
}

/// Turns the table into [`SETTINGS`].
macro_rules! declare {
    ($({ key: $key:literal, setter: $setter:ident,
         kind: $kind:ident $(($ty:ident: $($name:literal => $variant:ident),*; $explain:literal))?,
         attribute: $attribute:ident, set: $set:ident, default: $default:literal, example: $example:literal,
         quoted: $quoted:literal, meaning: $meaning:literal, what: $what:literal })*) => {
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

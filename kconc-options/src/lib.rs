//! The settings of a kconc subscriber, declared once. The `#[subscriber]`
//! attribute (`kconc-macros`) takes its options, their order and its "did
//! you mean" hints from [`SETTINGS`]; the runtime (`kconc-runtime`) takes
//! the keys of `--set` and their help from it; tests hold the docs to it.
//! A setting is added here, given a builder setter on `Subscriber`, and
//! used by the engine; the attribute and `--set` then check that they
//! handle it (their tests parse each key with its [`Setting::example`]).

/// One setting of a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Its name, as the attribute's option and as `--set NAME.KEY=..`.
    pub key: &'static str,
    /// The `#[subscriber(..)]` attribute takes it.
    pub attribute: bool,
    /// `--set` takes it (settings fixed by the code, such as the topics or
    /// the group, are not).
    pub set: bool,
    /// A valid value, as `--set` writes it (the attribute quotes it where
    /// it takes a string).
    pub example: &'static str,
    /// The attribute takes it as a string literal (else as an integer).
    pub quoted: bool,
    /// What it means, in a few words.
    pub meaning: &'static str,
}

const fn both(key: &'static str, example: &'static str, quoted: bool, meaning: &'static str) -> Setting {
    Setting {
        key,
        attribute: true,
        set: true,
        example,
        quoted,
        meaning,
    }
}

const fn attribute_only(key: &'static str, example: &'static str, quoted: bool, meaning: &'static str) -> Setting {
    Setting {
        key,
        attribute: true,
        set: false,
        example,
        quoted,
        meaning,
    }
}

/// Every setting, in the order the docs list them.
pub const SETTINGS: &[Setting] = &[
    attribute_only("topic", "orders", true, "the topic to consume"),
    attribute_only("topics", "", false, "several topics, one consumer group"),
    attribute_only("group", "billing", true, "the consumer group"),
    both("concurrency", "20", false, "handlers running at once"),
    both("ordering", "key", true, "unordered, key or partition"),
    both(
        "first_poll",
        "worker",
        true,
        "where handlers run: worker, poll_thread or auto",
    ),
    both(
        "max_buffered",
        "64",
        false,
        "fetched messages waiting to start, at most",
    ),
    both(
        "max_uncommitted",
        "1000",
        false,
        "offsets of a partition read past its last commit, at most",
    ),
    both(
        "handler_timeout",
        "30s",
        true,
        "how long a handler may run before its message fails",
    ),
    both(
        "commit_batch_size",
        "100",
        false,
        "commit after this many finished messages",
    ),
    both("commit_interval", "1s", true, "or at least this often"),
    both(
        "shutdown_timeout",
        "20s",
        true,
        "how long shutdown waits for running handlers",
    ),
    both(
        "revoke_timeout",
        "10s",
        true,
        "how long a revoke waits for its handlers and commit",
    ),
    both("retries", "3", false, "retries of a failed message before on_error"),
    both("backoff", "100ms", true, "wait before the first retry"),
    both("max_backoff", "10s", true, "longest wait between retries"),
    both(
        "on_error",
        "stop",
        true,
        "after the last attempt: skip, stop, or dead_letter with a dead_letter topic",
    ),
    both("dead_letter", "orders.dlq", true, "the dead-letter topic"),
    attribute_only("name", "billing", true, "the subscriber's name"),
    attribute_only("crate", "kconc_runtime", true, "where the runtime is, if renamed"),
];

/// The options of the `#[subscriber]` attribute, in order.
pub fn attribute_options() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.attribute)
}

/// The keys `--set` takes, in order.
pub fn settable() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.set)
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! A subscriber's settings from text (`--set`), generated from the
//! settings table, and the checks `App::start` makes of them.

use std::time::Duration;

use super::{CommitMetadata, FirstPoll, GroupProtocol, OffsetStore, OrderingMode, Subscriber};
use crate::error::SettingError;
use crate::policy::{ErrorPolicy, OnError};

/// A subscriber's settings, their defaults, `Debug`, the checks of their
/// values and the builder's setters, generated from the settings table
/// (`kconc_options::settings!`): one field per setting that has a value of
/// its own (the table's `value` column: its type and its default).
macro_rules! generate_settings {
    // Every row collected: the struct, its checks, and the setters.
    (@rows [$({ $key:literal, $setter:ident, $kind:ident, $ty:ty, $init:expr, $default:literal, $what:literal, $doc:literal })*]) => {
        /// A subscriber's settings (the README's options table, less those
        /// that are not a value of their own).
        #[derive(Clone)]
        pub(crate) struct Settings {
            $(#[doc = $doc] pub(crate) $setter: $ty,)*
        }

        impl Default for Settings {
            fn default() -> Self {
                Self { $($setter: $init,)* }
            }
        }

        impl Settings {
            /// Adds each setting to a `Debug` output, in the table's order.
            pub(super) fn debug_fields(&self, d: &mut std::fmt::DebugStruct<'_, '_>) {
                $(d.field($key, &self.$setter);)*
            }

            /// The first setting whose value its kind refuses, and why
            /// (what the macro checks at compile time, for subscribers
            /// built in code or changed by `--set`).
            pub(super) fn refused(&self) -> Option<(&'static str, String)> {
                $(if let Some(why) = generate_settings!(@check $kind, &self.$setter, $what) {
                    return Some(($key, why));
                })*
                None
            }
        }

        impl Subscriber {
            $(
                #[doc = $doc]
                #[doc = ""]
                #[doc = concat!("Default: ", $default, ".")]
                #[must_use]
                pub fn $setter(mut self, value: generate_settings!(@param $kind, $ty)) -> Self {
                    self.settings.$setter = generate_settings!(@convert $kind, value);
                    self
                }
            )*
        }
    };
    (@param AtLeastOne, $ty:ty) => { usize };
    (@param Timeout, $ty:ty) => { impl Into<Option<Duration>> };
    (@param Text, $ty:ty) => { impl Into<String> };
    (@param $kind:ident, $ty:ty) => { $ty };
    (@convert Text, $v:ident) => { Some($v.into()) };
    (@convert $kind:ident, $v:ident) => { $v.into() };
    (@check AtLeastOne, $v:expr, $what:literal) => { Unset::unset($v).then(|| explained("must be at least 1", $what)) };
    (@check LongerThanZero, $v:expr, $what:literal) => {
        Unset::unset($v).then(|| explained("must be longer than zero", $what))
    };
    (@check Timeout, $v:expr, $what:literal) => {
        Unset::unset($v).then(|| "must be longer than zero (or unset)".to_owned())
    };
    (@check Text, $v:expr, $what:literal) => { Unset::unset($v).then(|| "must not be empty".to_owned()) };
    (@check $kind:ident, $v:expr, $what:literal) => { None::<String> };
    // A row without a value of its own: no field.
    (@rows [$($rows:tt)*] { key: $key:literal, setter: $setter:ident, kind: $kind:ident $(($($choice:tt)*))?,
        value: (), $($rest:tt)* } $($more:tt)*) => {
        generate_settings!(@rows [$($rows)*] $($more)*);
    };
    (@rows [$($rows:tt)*] { key: $key:literal, setter: $setter:ident, kind: $kind:ident $(($($choice:tt)*))?,
        value: ($ty:ty = $init:expr), attribute: $attribute:ident, set: $set:ident, default: $default:literal,
        example: $example:literal, quoted: $quoted:literal, meaning: $meaning:literal, what: $what:literal,
        doc: $doc:literal } $($more:tt)*) => {
        generate_settings!(@rows [$($rows)* { $key, $setter, $kind, $ty, $init, $default, $what, $doc }] $($more)*);
    };
    ($($table:tt)*) => {
        generate_settings!(@rows [] $($table)*);
    };
}

kconc_options::settings!(generate_settings);

/// A value its kind refuses as not set: zero, or an empty text.
trait Unset {
    fn unset(&self) -> bool;
}

impl Unset for usize {
    fn unset(&self) -> bool {
        *self == 0
    }
}

impl Unset for Derived {
    fn unset(&self) -> bool {
        self.0 == Some(0)
    }
}

/// A count whose default is derived from other settings (`max_buffered`:
/// from `concurrency`), as set: shown as its number, or `derived`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Derived(Option<usize>);

impl From<usize> for Derived {
    fn from(n: usize) -> Self {
        Self(Some(n))
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("derived"),
        }
    }
}

impl Unset for Duration {
    fn unset(&self) -> bool {
        self.is_zero()
    }
}

impl Unset for Option<Duration> {
    fn unset(&self) -> bool {
        self.is_some_and(|d| d.is_zero())
    }
}

impl Unset for Option<String> {
    fn unset(&self) -> bool {
        self.as_deref().is_some_and(|s| s.trim().is_empty())
    }
}

/// `must be at least 1 (the number of handlers that may run at once)`.
fn explained(rule: &str, what: &str) -> String {
    match what {
        "" => rule.to_owned(),
        what => format!("{rule} ({what})"),
    }
}

impl Settings {
    /// The error policy these settings make.
    pub(crate) fn policy(&self) -> ErrorPolicy {
        ErrorPolicy {
            retries: self.retries,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
            on_error: self.on_error.clone(),
        }
    }

    /// What `max_buffered` is when it is not set: twice `concurrency` (for
    /// a `batch` handler, twice as many batches of `max_batch`), at least 16.
    pub(crate) fn max_buffered(&self, batch: bool) -> usize {
        let per_slot = if batch { self.max_batch.saturating_mul(2) } else { 2 };
        self.max_buffered
            .0
            .unwrap_or_else(|| self.concurrency.saturating_mul(per_slot).max(16))
    }
}

impl Subscriber {
    /// Checks the settings that the macro cannot check for code-built subscribers.
    pub(crate) fn validate(&self) -> Result<(), crate::error::Error> {
        let bad = |setting: &str, reason: &str| {
            Err(crate::error::Error::Setting {
                subscriber: self.name.clone(),
                source: SettingError::new(setting, format!("`{setting}` {reason}")),
            })
        };
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            return bad("topic", "must name at least one non-empty topic");
        }
        if self.group.is_empty() {
            return bad("group", "must not be empty");
        }
        match (self.settings.store, self.sql.is_some()) {
            (OffsetStore::Sql, false) => {
                return bad(
                    "store",
                    "is `sql`, but the handler takes no `Tx`: take one (`mut tx: Tx<Sqlite>`) and write through it",
                )
            }
            (OffsetStore::Kafka, true) => {
                return bad(
                    "store",
                    "must be `sql` for a handler that takes a `Tx` (`store = \"sql\"`)",
                )
            }
            _ => {}
        }
        if let Some((key, why)) = self.settings.refused() {
            return bad(key, &why);
        }
        let s = &self.settings;
        if s.retries > 0 && s.backoff.is_zero() {
            return bad("backoff", "must be longer than zero when there are retries");
        }
        if s.max_backoff < s.backoff {
            return bad("max_backoff", "must be at least `backoff`");
        }
        if matches!(&s.on_error, OnError::DeadLetter(t) if t.trim().is_empty()) {
            return bad("dead_letter", "must name a topic");
        }
        Ok(())
    }

    /// Shorthand for `on_error(OnError::DeadLetter(topic))`: the dead-letter topic.
    #[must_use]
    pub fn dead_letter(self, topic: impl Into<String>) -> Self {
        self.on_error(OnError::DeadLetter(topic.into()))
    }
}

/// [`Subscriber::set`], generated from the settings table
/// (`kconc_options::settings!`): each setting `--set` takes is parsed from
/// text by its kind and handed to the builder's setter of the same name.
macro_rules! apply_settings {
    ($({ key: $key:literal, setter: $setter:ident, kind: $kind:ident $(($($choice:tt)*))?,
         value: ($($value:tt)*), attribute: $attribute:ident, set: $set:ident, $($rest:tt)* })*) => {
        pub(super) fn apply_setting(sub: Subscriber, key: &str, v: &str) -> Result<Subscriber, SettingError> {
            $(apply_settings!(@one $set $kind, sub, key, v, $key, $setter);)*
            Err(not_settable(key))
        }
    };
    (@one no $kind:ident, $($x:tt)*) => {};
    (@one yes $kind:ident, $sub:ident, $k:ident, $v:ident, $key:literal, $setter:ident) => {
        if $k == $key {
            return Ok($sub.$setter(apply_settings!(@parse $kind, $key, $v)));
        }
    };
    (@parse AtLeastOne, $key:literal, $v:ident) => { whole_number::<usize>($key, $v)? };
    (@parse WholeNumber, $key:literal, $v:ident) => { whole_number::<u32>($key, $v)? };
    (@parse Duration, $key:literal, $v:ident) => { duration($key, $v)? };
    (@parse LongerThanZero, $key:literal, $v:ident) => { duration($key, $v)? };
    (@parse Timeout, $key:literal, $v:ident) => {
        match $v {
            "none" | "off" => None,
            _ => Some(parse_duration($v).ok_or_else(|| {
                SettingError::new($key, format!(
                    "`{}` takes a duration (a whole number and `ms`, `s` or `m`: `500ms`, `30s`, `1m`), or `none`, not `{}`",
                    $key, $v
                ))
            })?),
        }
    };
    (@parse Text, $key:literal, $v:ident) => { $v.to_owned() };
    // A choice, or a setting the attribute reads by itself: the setter's type's `FromStr`.
    (@parse $kind:ident, $key:literal, $v:ident) => { $v.parse()? };
}

kconc_options::settings!(apply_settings);

/// Why `--set` refuses `key`: a setting only the code sets, or an unknown
/// one (with those probably meant).
fn not_settable(key: &str) -> SettingError {
    if kconc_options::setting(key).is_some() {
        return SettingError::new(
            key,
            format!(
                "`{key}` is fixed by the code (`#[subscriber({key} = ..)]` or the `Subscriber` builder), not a \
                 run-time setting"
            ),
        );
    }
    let keys: Vec<&str> = kconc_options::settable().map(|s| s.key).collect();
    // Misspelt (`retires`), or part of a longer key (`timeout`).
    let mut meant: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| key.len() >= 3 && k.contains(key))
        .collect();
    if meant.is_empty() {
        meant.extend(
            keys.iter()
                .copied()
                .filter(|k| kconc_options::edit_distance(key, k) <= 2.max(k.len() / 4)),
        );
    }
    let all = keys.join(", ");
    let text = match meant.as_slice() {
        [] => format!("unknown setting `{key}` (one of {all})"),
        [one] => format!("unknown setting `{key}`: did you mean `{one}`? (one of {all})"),
        [first @ .., last] => format!(
            "unknown setting `{key}`: did you mean `{}` or `{last}`? (one of {all})",
            first.join("`, `")
        ),
    };
    SettingError::new(key, text)
}

fn whole_number<N: std::str::FromStr>(key: &str, v: &str) -> Result<N, SettingError> {
    v.parse()
        .map_err(|_| SettingError::new(key, format!("`{key}` takes a whole number, not `{v}`")))
}

fn duration(key: &str, v: &str) -> Result<Duration, SettingError> {
    parse_duration(v).ok_or_else(|| {
        SettingError::new(
            key,
            format!("`{key}` takes a duration such as `500ms`, `2s` or `1m`, not `{v}`"),
        )
    })
}

/// `"500ms"`, `"2s"`, `"1m"` as a duration (the grammar is `kconc-options`'s).
fn parse_duration(s: &str) -> Option<Duration> {
    kconc_options::parse_duration_ms(s).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// Each setting whose kind has a rule (at least 1, longer than zero,
    /// not empty) is refused by `App::start`'s check when `--set` breaks
    /// it, naming the setting: the checks are made from the table.
    #[test]
    fn every_rule_of_a_kind_is_checked() {
        use kconc_options::Kind;
        let mut checked = 0;
        for s in kconc_options::settable() {
            let bad = match s.kind {
                Kind::AtLeastOne => "0",
                Kind::LongerThanZero | Kind::Timeout => "0s",
                Kind::Text => " ",
                _ => continue,
            };
            let mut sub = Subscriber::new("s", ["t"], "g", |_m: Message| async {});
            sub.set(s.key, bad)
                .unwrap_or_else(|e| panic!("--set {}={bad}: {e}", s.key));
            let err = sub.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                err.contains(&format!("`{}`", s.key)),
                "{}={bad:?} was not refused: {err}",
                s.key
            );
            checked += 1;
        }
        assert!(checked >= 9, "{checked} rules checked");
    }

    /// `--set` handles every setting declared settable, with its example,
    /// and the README's `--set` row names each.
    #[test]
    fn set_takes_every_declared_setting_and_the_readme_names_it() {
        let readme = include_str!("../../../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `--set NAME.KEY=VALUE`"))
            .unwrap_or_default();
        for s in kconc_options::settable() {
            let mut sub = Subscriber::new("s", ["t"], "g", |_m: Message| async {});
            if let Err(e) = sub.set(s.key, s.example) {
                panic!("--set {}={}: {e}", s.key, s.example);
            }
            assert!(
                row.contains(&format!("`{}`", s.key)),
                "the README's --set row lacks `{}`",
                s.key
            );
        }
        let mut sub = Subscriber::new("s", ["t"], "g", |_m: Message| async {});
        assert!(sub.set("topic", "x").is_err(), "the topics are the code's");
    }
}

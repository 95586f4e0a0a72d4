//! A subscriber's settings from text (`--set`), generated from the
//! settings table, and the checks `App::start` makes of them.

use std::time::Duration;

use super::Subscriber;
use crate::error::SettingError;
use crate::policy::OnError;

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
        if self.concurrency == 0 {
            return bad("concurrency", "must be at least 1");
        }
        if self.max_buffered == Some(0) {
            return bad("max_buffered", "must be at least 1");
        }
        if self.max_uncommitted == 0 {
            return bad("max_uncommitted", "must be at least 1");
        }
        if self.handler_timeout.is_some_and(|d| d.is_zero()) {
            return bad("handler_timeout", "must be longer than zero (or unset)");
        }
        if self.commit_batch_size == 0 {
            return bad("commit_batch_size", "must be at least 1");
        }
        if self.commit_interval.is_zero() {
            return bad("commit_interval", "must be longer than zero");
        }
        if self.revoke_timeout.is_zero() {
            return bad(
                "revoke_timeout",
                "must be longer than zero: a revoke needs time to commit the revoked partitions' finished prefix",
            );
        }
        if self.policy.retries > 0 && self.policy.backoff.is_zero() {
            return bad("backoff", "must be longer than zero when there are retries");
        }
        if self.policy.max_backoff < self.policy.backoff {
            return bad("max_backoff", "must be at least `backoff`");
        }
        if matches!(&self.policy.on_error, OnError::DeadLetter(t) if t.trim().is_empty()) {
            return bad("dead_letter", "must name a topic");
        }
        Ok(())
    }
}

/// [`Subscriber::set`], generated from the settings table
/// (`kconc_options::settings!`): each setting `--set` takes is parsed from
/// text by its kind and handed to the builder's setter of the same name.
macro_rules! apply_settings {
    ($({ key: $key:literal, setter: $setter:ident, kind: $kind:ident $(($($choice:tt)*))?,
         attribute: $attribute:ident, set: $set:ident, $($rest:tt)* })*) => {
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

//! librdkafka properties in layers: the properties-file format, the
//! `KCONC_RDKAFKA_*` variables, `--property`, how they merge over the code's,
//! the settings no layer may change, and the consumer's own defaults.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientConfig;

use crate::error::Error;
use crate::subscriber::{GroupProtocol, Subscriber};

use super::*;

/// The prefix of the environment variables that set librdkafka properties.
pub(crate) const RDKAFKA_ENV_PREFIX: &str = "KCONC_RDKAFKA_";

/// The `KCONC_*` environment variables kconc reads, besides the
/// `KCONC_RDKAFKA_<NAME>` family: those the command line declares for its
/// flags (one declaration: a flag's variable cannot be missing here). Any
/// other `KCONC_*` variable is an error.
pub(crate) fn known_env_vars() -> &'static [String] {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        <super::Cli as clap::CommandFactory>::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
            .collect()
    })
}

/// Where a run-time setting came from; errors name it so an operator knows
/// what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Origin<'a> {
    /// A line (1-based) of the properties file at the path.
    File(&'a str, usize),
    /// The environment variable of this name.
    Env(&'a str),
    /// A `--property` flag.
    Flag,
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path, line) => write!(f, "{path}:{line}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag => f.write_str("--property"),
        }
    }
}

/// Global librdkafka properties whose names begin with `topic.` (any other
/// `topic.X` is the topic property `X`).
pub(super) const GLOBAL_TOPIC_PREFIXED: &[&str] = &["topic.metadata.", "topic.blacklist"];

/// The property librdkafka sets for `key`: a topic property may be written
/// with a `topic.` prefix (`topic.auto.offset.reset`), and
/// `metadata.broker.list` is `bootstrap.servers`. kconc applies and checks
/// properties by this name, so two spellings of one property cannot race.
pub(crate) fn canonical_key(key: &str) -> &str {
    let key = match key.strip_prefix("topic.") {
        Some(rest) if !GLOBAL_TOPIC_PREFIXED.iter().any(|g| key.starts_with(g)) => rest,
        _ => key,
    };
    match key {
        "metadata.broker.list" => "bootstrap.servers",
        other => other,
    }
}

/// Whether librdkafka reads `value` as boolean false (`false`, `f`, `0`,
/// any case, trimmed).
pub(super) fn is_false(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "f" | "0")
}

/// Why kconc refuses a librdkafka property, from any layer, if it does:
/// settings that would commit offsets or skip records behind kconc's back,
/// or take a consumer's group away from its subscriber. `key` may be any
/// spelling of the property (see [`canonical_key`]).
///
/// Refused: `group.id` and `group.instance.id`; `enable.auto.commit` and its legacy topic-level
/// alias `auto.commit.enable` unless false (librdkafka would commit stored
/// offsets on a timer and on revoke); `enable.auto.offset.store` unless
/// false (librdkafka would store each offset as it is read, before its
/// handler ran: with auto-commit that skips unfinished messages);
/// `auto.offset.reset` other than `earliest`/`smallest`/`beginning`
/// (`latest` skips what a new group, an expired offset or an out-of-range
/// position has not read; `error` stops the partition for good);
/// `check.crcs=true` (librdkafka 2.12 can skip good records after a CRC
/// failure).
pub(crate) fn refusal(key: &str, value: &str) -> Option<&'static str> {
    match canonical_key(key) {
        "group.id" => Some(
            "the consumer group is each subscriber's own; \
             use --group-prefix / KCONC_GROUP_PREFIX to change it per deployment",
        ),
        "group.protocol" => Some(
            "the group protocol is a setting of kconc's: use --group-protocol / KCONC_GROUP_PROTOCOL \
             (or `group_protocol` per subscriber)",
        ),
        "group.instance.id" => Some(
            "a static member's id must differ per subscriber; \
             use --instance-id / KCONC_INSTANCE_ID (or `instance_id`), which adds each subscriber's name",
        ),
        "enable.auto.commit" | "auto.commit.enable" if !is_false(value) => Some(
            "kconc commits offsets itself, only past finished messages; librdkafka's auto-commit \
             would commit behind its back (the only value allowed is false)",
        ),
        "enable.auto.offset.store" if !is_false(value) => Some(
            "kconc stores no offsets in librdkafka: storing each offset as it is read would let a \
             commit pass messages whose handlers have not finished (the only value allowed is false)",
        ),
        "auto.offset.reset"
            if !matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "earliest" | "smallest" | "beginning"
            ) =>
        {
            Some(
                "kconc never skips a message: a new group, an expired committed offset or an \
                 out-of-range position starts at the earliest offset (allowed: earliest, smallest, beginning)",
            )
        }
        "check.crcs" if !is_false(value) => Some(
            "librdkafka 2.12 can pass over good records after a CRC failure; brokers check CRCs \
             on produce (the only value allowed is false)",
        ),
        _ => None,
    }
}

/// Checks one run-time property with librdkafka itself (its name and the
/// form of its value), so a typo fails at start-up where it was written,
/// and refuses what [`refusal`] refuses. The reason never holds the value
/// of a secret property.
pub(super) fn check_property(key: &str, value: &str) -> Result<(), String> {
    if let Some(why) = refusal(key, value) {
        return Err(why.to_owned());
    }
    let mut c = ClientConfig::new();
    c.set(key, value);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(KafkaError::ClientConfig(res, desc, ..)) => Err(if !is_secret(key) {
            if matches!(res, RDKafkaConfRes::RD_KAFKA_CONF_INVALID) && !desc.contains(value) {
                format!("{desc} (got `{value}`)")
            } else {
                desc
            }
        } else if matches!(res, RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN) {
            "no such librdkafka property".to_owned()
        } else {
            "librdkafka refuses the value (not shown: the property is secret)".to_owned()
        }),
        Err(e) if !is_secret(key) => Err(e.to_string()),
        Err(_) => Err("librdkafka refuses it (value not shown: the property is secret)".to_owned()),
    }
}

pub(super) fn setting_error(origin: &Origin<'_>, key: &str, reason: &str) -> Error {
    Error::Config(format!("{origin}: `{key}`: {reason}"))
}

/// Parses a properties file in the Kafka client format: `key=value` per
/// line, `#` or `!` starting a comment line, blank lines ignored, whitespace
/// around key and value trimmed, `=` allowed in the value; a repeated key
/// keeps its last value. `path` only labels errors.
///
/// Fails on the first bad line with `PATH:LINE` and the reason: no `=`, no
/// name, or a property librdkafka does not know or whose value it refuses.
/// `group.id` is refused (groups are per subscriber). A malformed line is
/// never quoted and a secret value never shown.
pub(crate) fn parse_properties_file(path: &str, text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let origin = Origin::File(path, i + 1);
        let malformed = |what: &str| {
            Error::Config(format!(
                "{origin}: {what} (the line is not shown: it may hold a secret)"
            ))
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(malformed("expected KEY=VALUE"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(malformed("no property name before `=`"));
        }
        if key.contains(char::is_whitespace) {
            return Err(malformed("a property name has no spaces; expected KEY=VALUE"));
        }
        check_property(key, value).map_err(|r| setting_error(&origin, key, &r))?;
        set(&mut out, key, value);
    }
    Ok(out)
}

/// Reads and parses the `--config`/`KCONC_CONFIG` file (see
/// `parse_properties_file`); a missing or unreadable file fails naming the path.
pub(crate) fn read_properties_file(path: &std::path::Path) -> Result<Vec<(String, String)>, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--config/KCONC_CONFIG: cannot read `{shown}`: {e}")))?;
    parse_properties_file(&shown, &text)
}

/// The librdkafka properties set by `KCONC_RDKAFKA_<NAME>` variables among
/// `vars` (property `<name>` lower-cased, `_` read as `.`), sorted by name,
/// after checking every `KCONC_*` variable in `vars`.
///
/// Fails naming the variable for: an unknown `KCONC_*` variable (with the one
/// probably meant, e.g. `KCONC_BROKER` → `KCONC_BROKERS`), an empty property
/// name, two variables setting one property, `bootstrap.servers` or
/// `group.id` (use `KCONC_BROKERS`/`KCONC_GROUP_PREFIX`), and a property
/// librdkafka refuses. Values of secret properties are never shown.
pub(crate) fn env_properties_from<I>(vars: I) -> Result<Vec<(String, String)>, Error>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut props: Vec<(String, String, String)> = Vec::new();
    for (var, value) in vars {
        let Some(rest) = var.strip_prefix("KCONC_") else {
            continue;
        };
        if let Some(name) = var.strip_prefix(RDKAFKA_ENV_PREFIX) {
            let origin = Origin::Env(&var);
            if name.is_empty() {
                return Err(Error::Config(format!(
                    "{origin}: no property name after {RDKAFKA_ENV_PREFIX} \
                     (KCONC_RDKAFKA_<NAME>, e.g. KCONC_RDKAFKA_SECURITY_PROTOCOL)"
                )));
            }
            let key = name.to_ascii_lowercase().replace('_', ".");
            if canonical_key(&key) == "bootstrap.servers" {
                return Err(setting_error(
                    &origin,
                    &key,
                    "set the brokers with KCONC_BROKERS or --brokers",
                ));
            }
            check_property(&key, &value).map_err(|r| setting_error(&origin, &key, &r))?;
            if let Some((_, _, other)) = props.iter().find(|(k, _, _)| *k == key) {
                return Err(Error::Config(format!(
                    "environment variables {other} and {var} both set librdkafka property `{key}`; keep one"
                )));
            }
            props.push((key, value, var.clone()));
        } else if !known_env_vars().contains(&var) {
            return Err(unknown_env_var(&var, rest));
        }
    }
    props.sort();
    Ok(props.into_iter().map(|(k, v, _)| (k, v)).collect())
}

pub(super) fn unknown_env_var(var: &str, rest: &str) -> Error {
    let rest_upper = rest.to_ascii_uppercase();
    let close = |a: &str, b: &str| kconc_options::edit_distance(a, b) <= (b.len() / 3).clamp(1, 2);
    let hint = known_env_vars()
        .iter()
        .find(|known| close(&rest_upper, &known["KCONC_".len()..]))
        .map(|known| (*known).to_owned())
        .or_else(|| {
            // A misspelt family prefix: KCONC_RDKAFA_SASL_USERNAME.
            let wanted = &RDKAFKA_ENV_PREFIX["KCONC_".len()..];
            (1..=rest_upper.len())
                .filter(|&i| rest_upper.is_char_boundary(i))
                .find(|&i| close(&rest_upper[..i], wanted))
                .map(|i| format!("{RDKAFKA_ENV_PREFIX}{}", rest_upper[i..].trim_start_matches('_')))
        });
    let known = known_env_vars().join(", ");
    Error::Config(match hint {
        Some(h) => format!(
            "unknown environment variable {var}: did you mean {h}? \
             (kconc reads {known} and {RDKAFKA_ENV_PREFIX}<NAME>)"
        ),
        None => format!("unknown environment variable {var} (kconc reads {known} and {RDKAFKA_ENV_PREFIX}<NAME>)"),
    })
}

/// The `KCONC_*` variables of this process.
pub(super) fn process_env() -> Result<Vec<(String, String)>, Error> {
    let mut vars = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().filter(|k| k.starts_with("KCONC_")) else {
            continue;
        };
        let v = v
            .into_string()
            .map_err(|_| Error::Config(format!("environment variable {k}: the value is not valid UTF-8")))?;
        vars.push((k.to_owned(), v));
    }
    Ok(vars)
}

/// Checks `--property` flags (see [`env_properties_from`] for what is refused).
pub(super) fn check_flag_properties(props: &[(String, String)]) -> Result<(), Error> {
    for (key, value) in props {
        if canonical_key(key) == "bootstrap.servers" {
            return Err(setting_error(
                &Origin::Flag,
                key,
                "set the brokers with --brokers or KCONC_BROKERS",
            ));
        }
        check_property(key, value).map_err(|r| setting_error(&Origin::Flag, key, &r))?;
    }
    Ok(())
}

/// Sets `key` (under its canonical name) to `value`, replacing any earlier
/// value of the same property.
pub(super) fn set(props: &mut Vec<(String, String)>, key: &str, value: &str) {
    let key = canonical_key(key);
    match props.iter_mut().find(|(k, _)| k == key) {
        Some(e) => value.clone_into(&mut e.1),
        None => props.push((key.to_owned(), value.to_owned())),
    }
}

/// Merges property layers given lowest first (code, file, environment,
/// flags): one entry per property, with the value of the last layer that
/// sets it, in the order properties first appear.
pub(crate) fn merge_properties(layers: &[&[(String, String)]]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in layers.iter().flat_map(|l| l.iter()) {
        set(&mut out, k, v);
    }
    out
}

/// The consumer configuration of one subscriber. Later entries win:
/// kconc's defaults, the application's properties set in code, the
/// subscriber's set in code, then the run-time ones (file, environment, flags).
pub(crate) fn consumer_config(
    bootstrap: &str,
    sub: &Subscriber,
    app_properties: &[(String, String)],
    run_properties: &[(String, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", &sub.group)
        .set("client.id", format!("kconc-{}", sub.name))
        // Offsets are committed by kconc, only over finished messages.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning: nothing is silently skipped.
        .set("auto.offset.reset", "earliest")
        // Revoke only what moves on a rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Every assigned partition gets its own queue (see the consumer
        // module), and librdkafka's prefetch bound then holds per partition:
        // 8 MB each instead of the default 64 MB keeps a large assignment's
        // prefetch small while a fetch (1 MB per partition) still fits many
        // times over.
        .set("queued.max.messages.kbytes", "8192");
    for (k, v) in app_properties.iter().chain(&sub.properties).chain(run_properties) {
        c.set(canonical_key(k), v);
    }
    c.set("group.protocol", sub.settings.group_protocol.as_str());
    if sub.settings.group_protocol == GroupProtocol::Consumer {
        // The KIP-848 protocol assigns on the broker
        // (`group.remote.assignor`): librdkafka refuses the client-side
        // strategy with it (one set in any layer is refused at start:
        // `check_group_protocol`).
        c.remove("partition.assignment.strategy");
    }
    if let Some(id) = &sub.settings.instance_id {
        c.set("group.instance.id", format!("{id}-{}", sub.name));
    }
    c
}

/// What replaces a classic-protocol-only property under
/// `group_protocol = "consumer"` (KIP-848), where librdkafka rejects it.
pub(crate) fn classic_only(key: &str) -> Option<&'static str> {
    match canonical_key(key) {
        "partition.assignment.strategy" => Some(
            "the broker assigns partitions under group_protocol = \"consumer\": \
             choose its assignor with `group.remote.assignor` (uniform or range)",
        ),
        "session.timeout.ms" => Some(
            "the session timeout is the broker's under group_protocol = \"consumer\": \
             set `group.consumer.session.timeout.ms` on the broker (or the group's config)",
        ),
        "heartbeat.interval.ms" => Some(
            "the heartbeat interval is the broker's under group_protocol = \"consumer\": \
             set `group.consumer.heartbeat.interval.ms` on the broker (or the group's config)",
        ),
        "group.protocol.type" => Some("it has no use under group_protocol = \"consumer\"; leave it out"),
        _ => None,
    }
}

/// Refuses, for each subscriber under `group_protocol = "consumer"`, the
/// classic-only properties ([`classic_only`]) in any layer, naming the
/// subscriber, the layer and what replaces the property.
pub(crate) fn check_group_protocol(
    app_properties: &[(String, String)],
    run_properties: &[(String, String)],
    subscribers: &[&Subscriber],
) -> Result<(), Error> {
    for s in subscribers {
        if s.settings.group_protocol != GroupProtocol::Consumer {
            continue;
        }
        let layers = [
            ("App::property", app_properties),
            ("Subscriber::property", &s.properties[..]),
            (
                "a run-time property (--property, KCONC_RDKAFKA_*, --config)",
                run_properties,
            ),
        ];
        for (layer, properties) in layers {
            for (k, _) in properties {
                if let Some(why) = classic_only(k) {
                    return Err(Error::Config(format!(
                        "subscriber `{}` (group_protocol = \"consumer\"): {layer} `{k}`: {why}",
                        s.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Refuses, naming where it was set, a property set in code that
/// [`refusal`] refuses (the run-time layers are checked as they are read).
pub(crate) fn check_code_properties(
    app_properties: &[(String, String)],
    subscribers: &[&Subscriber],
) -> Result<(), Error> {
    for (k, v) in app_properties {
        if let Some(why) = refusal(k, v) {
            return Err(Error::Config(format!("App::property `{k}`: {why}")));
        }
    }
    for s in subscribers {
        for (k, v) in &s.properties {
            if let Some(why) = refusal(k, v) {
                return Err(Error::Config(format!(
                    "subscriber `{}`: Subscriber::property `{k}`: {why}",
                    s.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_util::{config_err, kv};

    #[test]
    fn later_layers_win_and_each_property_appears_once() {
        let code = kv(&[("client.rack", "code"), ("fetch.min.bytes", "1"), ("a", "code")]);
        let file = kv(&[("client.rack", "file"), ("fetch.max.bytes", "2000000"), ("a", "file")]);
        let env = kv(&[("client.rack", "env"), ("a", "env")]);
        let flags = kv(&[("client.rack", "flag")]);
        assert_eq!(
            merge_properties(&[&code, &file, &env, &flags]),
            kv(&[
                ("client.rack", "flag"),
                ("fetch.min.bytes", "1"),
                ("a", "env"),
                ("fetch.max.bytes", "2000000"),
            ])
        );
    }

    /// `instance_id` becomes `group.instance.id` with the subscriber's
    /// name after it; the property itself is refused (one id for every
    /// subscriber would fence them); under the KIP-848 protocol the
    /// client-side assignment strategy is left out.
    #[test]
    fn the_instance_id_is_suffixed_per_subscriber() {
        let sub = Subscriber::new("billing", ["t"], "g", |_m: crate::Message| async {}).instance_id("pod-3");
        let c = consumer_config("b:1", &sub, &[], &[]);
        assert_eq!(c.get("group.instance.id"), Some("pod-3-billing"));
        assert!(c.get("partition.assignment.strategy").is_some());
        assert_eq!(c.get("group.protocol"), Some("classic"));
        let consumer = sub.clone().group_protocol(GroupProtocol::Consumer);
        let c = consumer_config("b:1", &consumer, &[], &[]);
        assert_eq!(c.get("partition.assignment.strategy"), None);
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        let plain = Subscriber::new("s", ["t"], "g", |_m: crate::Message| async {});
        assert_eq!(consumer_config("b:1", &plain, &[], &[]).get("group.instance.id"), None);
        assert!(refusal("group.instance.id", "x").is_some_and(|why| why.contains("--instance-id")));
    }

    /// `group.protocol` is refused as a property (it is `group_protocol`);
    /// under `consumer` the classic-only properties are refused from every
    /// layer, naming what replaces them, and `group.remote.assignor` is
    /// taken; under `classic` they are taken.
    #[test]
    fn under_the_consumer_protocol_the_classic_only_properties_are_refused() {
        assert!(refusal("group.protocol", "consumer").is_some_and(|why| why.contains("--group-protocol")));
        let classic = Subscriber::new("s", ["t"], "g", |_m: crate::Message| async {});
        let consumer = classic.clone().group_protocol(GroupProtocol::Consumer);
        let timeout = kv(&[("session.timeout.ms", "6000")]);
        assert!(check_group_protocol(&timeout, &timeout, &[&classic]).is_ok());
        for (layer, app, run, sub) in [
            ("App::property", timeout.clone(), Vec::new(), consumer.clone()),
            ("run-time", Vec::new(), timeout.clone(), consumer.clone()),
            (
                "Subscriber::property",
                Vec::new(),
                Vec::new(),
                consumer.clone().property("session.timeout.ms", "6000"),
            ),
        ] {
            let Err(Error::Config(e)) = check_group_protocol(&app, &run, &[&sub]) else {
                panic!("{layer}: not refused");
            };
            assert!(
                e.contains(layer)
                    && e.contains("session.timeout.ms")
                    && e.contains("group.consumer.session.timeout.ms"),
                "{e}"
            );
        }
        for (key, replacement) in [
            ("partition.assignment.strategy", "group.remote.assignor"),
            ("heartbeat.interval.ms", "group.consumer.heartbeat.interval.ms"),
            ("group.protocol.type", "no use"),
        ] {
            let Err(Error::Config(e)) = check_group_protocol(&kv(&[(key, "x")]), &[], &[&consumer]) else {
                panic!("{key}: not refused");
            };
            assert!(e.contains(replacement), "{e}");
        }
        let assignor = kv(&[("group.remote.assignor", "range")]);
        assert!(check_group_protocol(&assignor, &assignor, &[&consumer]).is_ok());
    }

    #[test]
    fn run_time_properties_override_the_subscribers_own() {
        let sub = Subscriber::new("s", ["t"], "g", |_m: crate::Message| async {}).property("client.rack", "sub");
        let app = kv(&[("client.rack", "app"), ("fetch.min.bytes", "7")]);
        let c = consumer_config("b:1", &sub, &app, &[]);
        assert_eq!(c.get("client.rack"), Some("sub"));
        assert_eq!(c.get("fetch.min.bytes"), Some("7"));
        let c = consumer_config("b:1", &sub, &app, &kv(&[("client.rack", "flag")]));
        assert_eq!(c.get("client.rack"), Some("flag"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn environment_variables_become_properties() {
        let env = kv(&[
            ("PATH", "/bin"),
            ("KCONC_RDKAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KCONC_RDKAFKA_SASL_USERNAME", "u"),
            ("KCONC_BROKERS", "b:9092"),
            ("KCONC_HTTP", "0.0.0.0:9000"),
        ]);
        assert_eq!(
            env_properties_from(env).unwrap(),
            kv(&[("sasl.username", "u"), ("security.protocol", "SASL_PLAINTEXT")])
        );
    }

    #[test]
    fn an_unknown_kconc_variable_fails_naming_it_and_the_one_meant() {
        for (var, meant) in [
            ("KCONC_BROKER", "KCONC_BROKERS"),
            ("KCONC_GROUPPREFIX", "KCONC_GROUP_PREFIX"),
            ("KCONC_brokers", "KCONC_BROKERS"),
            ("KCONC_RDKAFA_SASL_USERNAME", "KCONC_RDKAFKA_SASL_USERNAME"),
            ("KCONC_RDKAFKA", "KCONC_RDKAFKA_"),
        ] {
            let text = config_err(env_properties_from(kv(&[(var, "hunter2")])));
            assert!(
                text.contains(var) && text.contains(&format!("did you mean {meant}")),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
        let text = config_err(env_properties_from(kv(&[("KCONC_SOMETHING_ELSE", "x")])));
        assert!(
            text.contains("KCONC_SOMETHING_ELSE") && !text.contains("did you mean"),
            "{text}"
        );
        assert!(text.contains("KCONC_BROKERS"), "lists the known variables: {text}");
    }

    /// Every variable a flag declares (and `--help` shows) is read, not
    /// refused as unknown (at a6d8e9a `KCONC_INSTANCE_ID` was), and the
    /// README's table names each; each documented `KCONC_*` variable of the
    /// README is one of them, or a property of the `KCONC_RDKAFKA_` family.
    #[test]
    fn every_declared_and_documented_variable_is_read() {
        let known = known_env_vars();
        assert!(known.iter().any(|v| v == "KCONC_INSTANCE_ID"), "{known:?}");
        let readme = include_str!("../../../README.md");
        let table = &readme[readme.find("| flag | environment | meaning |").expect("the flag table")..];
        let table = &table[..table.find("\n\n").unwrap_or(table.len())];
        for var in known {
            assert!(
                env_properties_from(kv(&[(var.as_str(), "x")])).is_ok_and(|p| p.is_empty()),
                "{var}"
            );
            assert!(
                table.contains(&format!("`{var}`")),
                "the README's flag table lacks {var}"
            );
        }
        let documented: Vec<&str> = table
            .split('`')
            .filter(|w| w.starts_with("KCONC_") && !w.starts_with(RDKAFKA_ENV_PREFIX))
            .collect();
        assert!(documented.len() >= known.len());
        for var in documented {
            assert!(
                known.iter().any(|k| k == var),
                "the README documents {var}, which kconc does not read"
            );
        }
    }

    #[test]
    fn bad_rdkafka_variables_fail_naming_the_variable() {
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_", "x")])));
        assert!(
            text.contains("KCONC_RDKAFKA_") && text.contains("no property name"),
            "{text}"
        );
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_FETCH_WAIT_MAX_MSEC", "1")])));
        assert!(
            text.contains("KCONC_RDKAFKA_FETCH_WAIT_MAX_MSEC") && text.contains("fetch.wait.max.msec"),
            "{text}"
        );
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_SESSION_TIMEOUT_MS", "soon")])));
        assert!(
            text.contains("KCONC_RDKAFKA_SESSION_TIMEOUT_MS") && text.contains("soon"),
            "{text}"
        );
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_BOOTSTRAP_SERVERS", "b:1")])));
        assert!(text.contains("KCONC_BROKERS"), "{text}");
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_GROUP_ID", "g")])));
        assert!(text.contains("KCONC_GROUP_PREFIX"), "{text}");
        let text = config_err(env_properties_from(kv(&[("KCONC_RDKAFKA_MY_PASSWORD", "hunter2")])));
        assert!(
            text.contains("KCONC_RDKAFKA_MY_PASSWORD") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn the_properties_file_format() {
        let text = "\u{feff}# a comment\n! another\n\n  bootstrap.servers = b1:9092,b2:9092  \n\
                    client.rack=r1\nsasl.username=u\r\nsasl.password = pa=ss word \nclient.rack=r2\n";
        assert_eq!(
            parse_properties_file("k.properties", text).unwrap(),
            kv(&[
                ("bootstrap.servers", "b1:9092,b2:9092"),
                ("client.rack", "r2"),
                ("sasl.username", "u"),
                ("sasl.password", "pa=ss word"),
            ])
        );
    }

    #[test]
    fn a_bad_file_line_fails_with_file_and_line_and_no_secret() {
        for (text, line, why) in [
            ("client.rack=r\nsasl.password hunter2\n", 2, "KEY=VALUE"),
            ("# c\n\n = hunter2\n", 3, "no property name"),
            ("sasl password = hunter2\n", 1, "no spaces"),
            ("my.password=hunter2\n", 1, "my.password"),
            ("session.timeout.ms=soon\n", 1, "soon"),
            ("group.id=g\n", 1, "KCONC_GROUP_PREFIX"),
        ] {
            let err = config_err(parse_properties_file("/etc/k.properties", text));
            assert!(err.contains(&format!("/etc/k.properties:{line}:")), "{err}");
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = config_err(read_properties_file(std::path::Path::new(
            "/nonexistent/kconc.properties",
        )));
        assert!(
            err.contains("/nonexistent/kconc.properties") && err.contains("--config"),
            "{err}"
        );
    }
}

//! Parsing and validating the options of `#[subscriber(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprArray, ExprLit, Ident, Lit, LitInt, LitStr, Token};

use crate::errors::Errors;

/// Every option the attribute accepts, in the order the docs list them
/// (declared once, in `kconc-options`).
fn keys() -> impl Iterator<Item = &'static str> {
    kconc_options::attribute_options().map(|s| s.key)
}

/// The validated options. Literals keep their spans so generated code that
/// uses them points back at the attribute.
pub(crate) struct Args {
    /// One or more non-empty topic names.
    pub(crate) topics: Vec<LitStr>,
    pub(crate) group: LitStr,
    pub(crate) concurrency: Option<LitInt>,
    /// The `OrderingMode` variant: `Unordered`, `Key` or `Partition`.
    pub(crate) ordering: Option<&'static str>,
    /// The `FirstPoll` variant: `Worker`, `PollThread` or `Auto`.
    pub(crate) first_poll: Option<&'static str>,
    pub(crate) max_buffered: Option<LitInt>,
    pub(crate) max_uncommitted: Option<LitInt>,
    pub(crate) handler_timeout_ms: Option<u64>,
    pub(crate) commit_batch_size: Option<LitInt>,
    pub(crate) commit_interval_ms: Option<u64>,
    pub(crate) shutdown_timeout_ms: Option<u64>,
    pub(crate) revoke_timeout_ms: Option<u64>,
    pub(crate) retries: Option<u32>,
    pub(crate) backoff_ms: Option<u64>,
    pub(crate) max_backoff_ms: Option<u64>,
    /// `"skip"` or `"stop"` (a dead letter is `dead_letter`).
    pub(crate) on_error: Option<LitStr>,
    pub(crate) dead_letter: Option<LitStr>,
    pub(crate) name: Option<LitStr>,
    /// The path that replaces `::kconc_runtime` in generated code.
    pub(crate) krate: Option<syn::Path>,
}

/// Parses `key = value, ...`: the options if every one is valid, else an
/// error for each mistake, each spanned at the offending token.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
    let mut errors = Errors::default();
    let mut pairs: Vec<(Ident, Expr)> = Vec::new();
    let parser = |input: ParseStream<'_>| {
        while !input.is_empty() {
            let key = Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            pairs.push((key, value));
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        // The pairs read before the mistake are still checked below.
        errors.push_at(
            e.span(),
            format!("{e}; the options are `key = value` pairs separated by commas, e.g. `topic = \"orders\", group = \"billing\"`"),
        );
    }

    let mut seen: Vec<String> = Vec::new();
    let mut topic_key: Option<String> = None;
    let mut topics = Vec::new();
    let mut group = None;
    let mut concurrency = None;
    let mut ordering_mode = None;
    let mut first_poll_mode = None;
    let mut max_buffered = None;
    let mut max_uncommitted = None;
    let mut handler_timeout_ms = None;
    let mut commit_batch_size = None;
    let mut commit_interval_ms = None;
    let mut shutdown_timeout_ms = None;
    let mut revoke_timeout_ms = None;
    let mut retries = None;
    let mut backoff_ms = None;
    let mut max_backoff_ms = None;
    let mut max_backoff_span = Span::call_site();
    let mut on_error: Option<LitStr> = None;
    let mut dead_letter: Option<LitStr> = None;
    let mut name = None;
    let mut krate = None;
    for (key, value) in pairs {
        let k = key.unraw().to_string();
        if seen.contains(&k) {
            errors.push_at(key.span(), format!("duplicate option `{k}`: give each option once"));
            continue;
        }
        seen.push(k.clone());
        let errors = &mut errors;
        match k.as_str() {
            "topic" | "topics" => {
                if let Some(first) = &topic_key {
                    errors.push_at(
                        key.span(),
                        format!("`{k}` given together with `{first}`: use `topic = \"..\"` for one topic or `topics = [..]` for several, not both"),
                    );
                    continue;
                }
                topic_key = Some(k.clone());
                topics = if k == "topic" {
                    non_empty_str(&value, "topic", errors).into_iter().collect()
                } else {
                    topic_list(&value, errors)
                };
            }
            "group" => group = non_empty_str(&value, "group", errors),
            "concurrency" => {
                concurrency = at_least_one(
                    &value,
                    "concurrency",
                    "the number of handlers that may run at once",
                    errors,
                );
            }
            "max_buffered" => {
                max_buffered = at_least_one(
                    &value,
                    "max_buffered",
                    "how many fetched messages may wait for a handler slot",
                    errors,
                );
            }
            "max_uncommitted" => {
                max_uncommitted = at_least_one(
                    &value,
                    "max_uncommitted",
                    "how many offsets of a partition may be read past its last committed offset",
                    errors,
                );
            }
            "handler_timeout" => {
                handler_timeout_ms = longer_than_zero(
                    &value,
                    "handler_timeout",
                    "how long a handler may run before its message fails",
                    errors,
                );
            }
            "commit_batch_size" => {
                commit_batch_size = at_least_one(
                    &value,
                    "commit_batch_size",
                    "how many finished messages trigger a commit",
                    errors,
                );
            }
            "commit_interval" => {
                commit_interval_ms = longer_than_zero(
                    &value,
                    "commit_interval",
                    "how often finished offsets are committed",
                    errors,
                );
            }
            "shutdown_timeout" => shutdown_timeout_ms = duration(&value, "shutdown_timeout", errors),
            "revoke_timeout" => {
                revoke_timeout_ms = longer_than_zero(
                    &value,
                    "revoke_timeout",
                    "how long a revoke waits for the revoked partitions' handlers and commit",
                    errors,
                );
            }
            "retries" => retries = whole_number(&value, "retries", errors),
            "backoff" => backoff_ms = duration(&value, "backoff", errors),
            "max_backoff" => {
                max_backoff_ms = duration(&value, "max_backoff", errors);
                max_backoff_span = value.span();
            }
            "on_error" => {
                if let Some(s) = string(&value, "on_error", errors) {
                    if ["skip", "stop", "dead_letter"].contains(&s.value().as_str()) {
                        on_error = Some(s);
                    } else {
                        errors.push_at(
                            s.span(),
                            format!("unknown `on_error = \"{}\"`: use `\"skip\"` (log and commit, the default), `\"stop\"` (stop the partition) or `\"dead_letter\"` together with `dead_letter = \"topic\"`", s.value()),
                        );
                    }
                }
            }
            "dead_letter" => dead_letter = non_empty_str(&value, "dead_letter", errors),
            "name" => name = non_empty_str(&value, "name", errors),
            "ordering" => ordering_mode = ordering(&value, errors),
            "first_poll" => first_poll_mode = first_poll(&value, errors),
            "crate" => krate = crate_path(&value, errors),
            _ => {
                let hint = closest(&k).map_or(String::new(), |c| format!("; did you mean `{c}`?"));
                errors.push_at(
                    key.span(),
                    format!(
                        "unknown option `{k}`{hint}\nvalid options: {}",
                        keys().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
    match (&on_error, &dead_letter) {
        (Some(o), None) if o.value() == "dead_letter" => errors.push_at(
            o.span(),
            "`on_error = \"dead_letter\"` needs the topic: add `dead_letter = \"orders.dlq\"`",
        ),
        (Some(o), Some(_)) if o.value() != "dead_letter" => errors.push_at(
            o.span(),
            format!(
                "`on_error = \"{}\"` contradicts `dead_letter`: remove one of them",
                o.value()
            ),
        ),
        _ => {}
    }
    if let (Some(b), Some(m)) = (backoff_ms, max_backoff_ms) {
        if m < b {
            errors.push_at(
                max_backoff_span,
                "`max_backoff` is shorter than `backoff`: the longest wait between retries must be at least the first",
            );
        }
    }
    if topic_key.is_none() {
        errors.push_at(
            Span::call_site(),
            "missing `topic`: add `topic = \"orders\"` (or `topics = [\"a\", \"b\"]`) to #[subscriber(...)]",
        );
    }
    if !seen.iter().any(|k| k == "group") {
        errors.push_at(Span::call_site(), MISSING_GROUP);
    }
    match (errors.finish(()), group) {
        (Ok(()), Some(group)) => Ok(Args {
            topics,
            group,
            concurrency,
            ordering: ordering_mode,
            first_poll: first_poll_mode,
            max_buffered,
            max_uncommitted,
            handler_timeout_ms,
            commit_batch_size,
            commit_interval_ms,
            shutdown_timeout_ms,
            revoke_timeout_ms,
            retries,
            backoff_ms,
            max_backoff_ms,
            on_error,
            dead_letter,
            name,
            krate,
        }),
        (Err(e), _) => Err(e),
        // Not reached: a `group` missing or invalid has been reported above.
        (Ok(()), None) => Err(syn::Error::new(Span::call_site(), MISSING_GROUP)),
    }
}

const MISSING_GROUP: &str =
    "missing `group`: add the consumer group, e.g. `group = \"billing\"`, to #[subscriber(...)]";

fn lit(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        // Literals passed through a `macro_rules!` arrive wrapped in a group.
        Expr::Group(g) => lit(&g.expr),
        _ => None,
    }
}

fn lit_str(value: &Expr) -> Option<&LitStr> {
    match lit(value) {
        Some(Lit::Str(s)) => Some(s),
        _ => None,
    }
}

fn string(value: &Expr, key: &str, errors: &mut Errors) -> Option<LitStr> {
    let s = lit_str(value).cloned();
    if s.is_none() {
        errors.push_at(
            value.span(),
            format!("`{key}` takes a string literal, e.g. `{key} = \"...\"`"),
        );
    }
    s
}

fn non_empty_str(value: &Expr, key: &str, errors: &mut Errors) -> Option<LitStr> {
    let s = string(value, key, errors)?;
    if s.value().trim().is_empty() {
        errors.push_at(s.span(), format!("`{key}` must not be empty"));
        return None;
    }
    Some(s)
}

fn topic_list(value: &Expr, errors: &mut Errors) -> Vec<LitStr> {
    let Expr::Array(ExprArray { elems, .. }) = value else {
        errors.push_at(
            value.span(),
            "`topics` takes a list of string literals, e.g. `topics = [\"orders\", \"refunds\"]` (for one topic, `topic = \"orders\"`)",
        );
        return Vec::new();
    };
    if elems.is_empty() {
        errors.push_at(
            value.span(),
            "`topics` must name at least one topic, e.g. `topics = [\"orders\"]`",
        );
        return Vec::new();
    }
    elems
        .iter()
        .filter_map(|e| non_empty_str(e, "topics", errors))
        .collect()
}

fn at_least_one(value: &Expr, key: &str, what: &str, errors: &mut Errors) -> Option<LitInt> {
    let Some(Lit::Int(i)) = lit(value) else {
        errors.push_at(
            value.span(),
            format!("`{key}` takes a whole number ({what}), e.g. `{key} = 20`"),
        );
        return None;
    };
    match i.base10_parse::<u32>() {
        Ok(0) => {
            errors.push_at(i.span(), format!("`{key}` must be at least 1 ({what})"));
            None
        }
        Ok(_) => Some(i.clone()),
        Err(_) => {
            errors.push_at(
                i.span(),
                format!("`{key}` must be a whole number from 1 to {}", u32::MAX),
            );
            None
        }
    }
}

fn whole_number(value: &Expr, key: &str, errors: &mut Errors) -> Option<u32> {
    let Some(Lit::Int(i)) = lit(value) else {
        errors.push_at(value.span(), format!("`{key}` takes a whole number, e.g. `{key} = 3`"));
        return None;
    };
    match i.base10_parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.push_at(
                i.span(),
                format!("`{key}` must be a whole number from 0 to {}", u32::MAX),
            );
            None
        }
    }
}

fn duration(value: &Expr, key: &str, errors: &mut Errors) -> Option<u64> {
    let s = string(value, key, errors)?;
    let ms = parse_duration_ms(&s.value());
    if ms.is_none() {
        errors.push_at(
            s.span(),
            format!("`{key}` takes a duration: a whole number followed by `ms`, `s` or `m`, e.g. `{key} = \"500ms\"`, `\"2s\"` or `\"1m\"`"),
        );
    }
    ms
}

/// A duration that must be longer than zero; `what` says what it is.
fn longer_than_zero(value: &Expr, key: &str, what: &str, errors: &mut Errors) -> Option<u64> {
    let ms = duration(value, key, errors);
    if let (Some(0), Some(s)) = (ms, lit_str(value)) {
        errors.push_at(s.span(), format!("`{key}` must be longer than zero: it is {what}"));
    }
    ms
}

/// `"500ms"`, `"2s"`, `"1m"` to milliseconds; `None` for anything else.
fn parse_duration_ms(s: &str) -> Option<u64> {
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

fn ordering(value: &Expr, errors: &mut Errors) -> Option<&'static str> {
    let s = string(value, "ordering", errors)?;
    match s.value().as_str() {
        "unordered" => Some("Unordered"),
        "key" => Some("Key"),
        "partition" => Some("Partition"),
        given => {
            let hint = ["unordered", "key", "partition"]
                .into_iter()
                .find(|m| {
                    given.eq_ignore_ascii_case(m)
                        || given.trim_end_matches('s').eq_ignore_ascii_case(m)
                        || given.to_ascii_lowercase().starts_with(m)
                })
                .map_or(String::new(), |m| format!("; did you mean `\"{m}\"`?"));
            errors.push_at(
                s.span(),
                format!("unknown ordering `{given}`{hint}\nuse `ordering = \"unordered\"` (the default), `\"key\"` (same key one at a time, in offset order) or `\"partition\"` (each partition one at a time)"),
            );
            None
        }
    }
}

fn first_poll(value: &Expr, errors: &mut Errors) -> Option<&'static str> {
    let s = string(value, "first_poll", errors)?;
    match s.value().as_str() {
        "worker" => Some("Worker"),
        "poll_thread" => Some("PollThread"),
        "auto" => Some("Auto"),
        given => {
            errors.push_at(
                s.span(),
                format!("unknown first_poll `{given}`\nuse `first_poll = \"worker\"` (the default: handlers run on the tokio workers), `\"poll_thread\"` (the poll thread runs each handler up to its first wait; for short, non-blocking handlers only) or `\"auto\"` (the poll thread does so while first polls stay short)"),
            );
            None
        }
    }
}

fn crate_path(value: &Expr, errors: &mut Errors) -> Option<syn::Path> {
    let s = string(value, "crate", errors)?;
    match s.parse_with(syn::Path::parse_mod_style) {
        // Spanned at the literal so a path that does not resolve is reported there.
        Ok(p) => Some(respan_path(p, s.span())),
        Err(_) => {
            errors.push_at(
                s.span(),
                "`crate` takes the path of the kconc runtime as a string, e.g. `crate = \"my_kconc\"` for a dependency renamed to `my_kconc`",
            );
            None
        }
    }
}

fn respan_path(mut path: syn::Path, span: Span) -> syn::Path {
    if let Some(colon) = &mut path.leading_colon {
        colon.spans = [span, span];
    }
    for seg in &mut path.segments {
        seg.ident.set_span(span);
    }
    for p in path.segments.pairs_mut() {
        if let syn::punctuated::Pair::Punctuated(_, colon) = p {
            colon.spans = [span, span];
        }
    }
    path
}

/// The valid option closest to a misspelt one, if it is close enough to be
/// a likely typo.
fn closest(key: &str) -> Option<&'static str> {
    keys()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2 || (key.len() >= 3 && (k.starts_with(key) || key.starts_with(k))))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
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
    fn durations_accept_ms_s_and_m_only() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        assert_eq!(parse_duration_ms("1h"), None);
        assert_eq!(parse_duration_ms("2"), None);
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("1.5s"), None);
        assert_eq!(parse_duration_ms("5 s"), None);
        assert_eq!(parse_duration_ms("10 days"), None);
        assert_eq!(parse_duration_ms("99999999999999999999m"), None);
    }

    /// The docs name every option the attribute accepts: the attribute's
    /// rustdoc, the README's table of options, and the README's sample
    /// error, which lists them as the compiler does.
    #[test]
    fn the_docs_name_every_option() {
        let rustdoc: String = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("///"))
            .collect::<Vec<_>>()
            .join(" ");
        let readme = include_str!("../../README.md");
        for key in keys() {
            assert!(
                rustdoc.contains(&format!("`{key} =")),
                "the #[subscriber] rustdoc does not name `{key}`"
            );
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "the README's table of options lacks `{key}`"
            );
        }
        let listed = format!("valid options: {}\n", keys().collect::<Vec<_>>().join(", "));
        assert!(
            readme.contains(&listed),
            "the README's sample error does not list today's options: {listed}"
        );
    }

    /// Every option of the table is handled by `parse`: each parses with
    /// its example (an option the table has and `parse` lacks would be
    /// refused as unknown).
    #[test]
    fn every_declared_option_parses() {
        for s in kconc_options::attribute_options() {
            let value = match (s.key, s.quoted) {
                ("topic" | "group", _) => continue,
                ("topics", _) => "[\"a\", \"b\"]".to_owned(),
                (_, true) => format!("\"{}\"", s.example),
                (_, false) => s.example.to_owned(),
            };
            let tokens: TokenStream = format!("topic = \"t\", group = \"g\", {} = {value}", s.key)
                .replace("topic = \"t\", group = \"g\", topics", "group = \"g\", topics")
                .parse()
                .expect("valid tokens");
            if let Err(e) = parse(tokens) {
                panic!("`{} = {value}` does not parse: {e}", s.key);
            }
        }
    }

    #[test]
    fn typos_get_a_hint_and_strangers_do_not() {
        assert_eq!(closest("concurency"), Some("concurrency"));
        assert_eq!(closest("topc"), Some("topic"));
        assert_eq!(closest("grop"), Some("group"));
        assert_eq!(closest("commit_interval_ms"), Some("commit_interval"));
        assert_eq!(closest("wibble"), None);
        assert_eq!(closest("parallelism"), None);
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let tokens: TokenStream = "concurrency = 0, colour = \"blue\", commit_interval = \"soon\""
            .parse()
            .expect("valid tokens");
        let Err(e) = parse(tokens) else {
            panic!("the options are invalid");
        };
        let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
    }
}

//! Parsing and validating the options of `#[subscriber(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprArray, ExprLit, Ident, Lit, LitInt, LitStr, Token};

use kconc_options::{Kind, Setting};

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
    /// The options that become calls of the builder's setter of the same
    /// name, each parsed by its kind, in the table's order.
    pub(crate) options: Vec<(&'static Setting, Value)>,
    /// `"skip"`, `"stop"` or `"dead_letter"` (with `dead_letter`).
    pub(crate) on_error: Option<LitStr>,
    pub(crate) name: Option<LitStr>,
    /// The path that replaces `::kconc_runtime` in generated code.
    pub(crate) krate: Option<syn::Path>,
    /// The options only a batch handler takes, given here, with their spans.
    pub(crate) batch_only: Vec<(&'static str, Span)>,
    /// Where `store = "sql"` is given, if it is.
    pub(crate) store_sql: Option<Span>,
}

/// The options only a batch handler takes.
pub(crate) const BATCH_ONLY: &[&str] = &["max_batch", "max_batch_bytes", "batch_wait"];

/// An option's value, as its setter takes it.
pub(crate) enum Value {
    /// A whole number from 1, as written.
    AtLeastOne(LitInt),
    WholeNumber(u32),
    Millis(u64),
    /// `(type, variant)` of a choice.
    Variant(&'static str, &'static str),
    Text(LitStr),
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
    let mut options: Vec<(&'static Setting, Value, Span)> = Vec::new();
    let mut on_error: Option<LitStr> = None;
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
            "name" => name = non_empty_str(&value, "name", errors),
            "crate" => krate = crate_path(&value, errors),
            _ if setting_of(&k).is_some() => {
                if let Some(setting) = setting_of(&k) {
                    if let Some(v) = parse_value(setting, &value, errors) {
                        options.push((setting, v, value.span()));
                    }
                }
            }
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
    let millis = |key: &str| {
        options.iter().find_map(|(s, v, span)| match v {
            Value::Millis(ms) if s.key == key => Some((*ms, *span)),
            _ => None,
        })
    };
    let dead_letter = options.iter().any(|(s, _, _)| s.key == "dead_letter");
    match (&on_error, dead_letter) {
        (Some(o), false) if o.value() == "dead_letter" => errors.push_at(
            o.span(),
            "`on_error = \"dead_letter\"` needs the topic: add `dead_letter = \"orders.dlq\"`",
        ),
        (Some(o), true) if o.value() != "dead_letter" => errors.push_at(
            o.span(),
            format!(
                "`on_error = \"{}\"` contradicts `dead_letter`: remove one of them",
                o.value()
            ),
        ),
        _ => {}
    }
    if let (Some((b, _)), Some((m, max_backoff_span))) = (millis("backoff"), millis("max_backoff")) {
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
        (Ok(()), Some(group)) => {
            let batch_only = options
                .iter()
                .filter(|(s, _, _)| BATCH_ONLY.contains(&s.key))
                .map(|(s, _, span)| (s.key, *span))
                .collect();
            let store_sql = options
                .iter()
                .find(|(s, v, _)| s.key == "store" && matches!(v, Value::Variant(_, "Sql")))
                .map(|(_, _, span)| *span);
            let mut options: Vec<(&'static Setting, Value)> = options.into_iter().map(|(s, v, _)| (s, v)).collect();
            options.sort_by_key(|(s, _)| kconc_options::SETTINGS.iter().position(|t| t.key == s.key));
            Ok(Args {
                topics,
                group,
                options,
                on_error,
                name,
                krate,
                batch_only,
                store_sql,
            })
        }
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
        let example = kconc_options::SETTINGS
            .iter()
            .find(|s| s.key == key)
            .map_or("...", |s| s.example);
        errors.push_at(
            value.span(),
            format!("`{key}` takes a string literal, e.g. `{key} = \"{example}\"`"),
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
    if let Some(Lit::Int(n)) = lit(value) {
        errors.push_at(
            n.span(),
            format!(
                "`{key}` takes a duration as a string, with its unit (`ms`, `s` or `m`): `{key} = \"{n}s\"` for {n} seconds, `\"{n}ms\"` for milliseconds"
            ),
        );
        return None;
    }
    let s = string(value, key, errors)?;
    let ms = kconc_options::parse_duration_ms(&s.value());
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

/// The option named `key`, if the builder takes it as a setter call (the
/// others are read by `parse` itself).
fn setting_of(key: &str) -> Option<&'static Setting> {
    kconc_options::attribute_options().find(|s| s.key == key && s.kind != Kind::Special)
}

/// An option's value by its kind, or its errors.
fn parse_value(setting: &'static Setting, value: &Expr, errors: &mut Errors) -> Option<Value> {
    let (key, what) = (setting.key, setting.what);
    match setting.kind {
        Kind::AtLeastOne => at_least_one(value, key, what, errors).map(Value::AtLeastOne),
        Kind::WholeNumber => whole_number(value, key, errors).map(Value::WholeNumber),
        Kind::Duration => duration(value, key, errors).map(Value::Millis),
        Kind::LongerThanZero | Kind::Timeout => longer_than_zero(value, key, what, errors).map(Value::Millis),
        Kind::Text => non_empty_str(value, key, errors).map(Value::Text),
        Kind::Choice { ty, values, explain } => {
            choice(value, key, values, explain, errors).map(|variant| Value::Variant(ty, variant))
        }
        Kind::Special => None,
    }
}

/// One of `values` (name written, variant); an unknown name gets a hint
/// when it is close to one, and `explain`.
fn choice(
    value: &Expr,
    key: &str,
    values: &[(&'static str, &'static str)],
    explain: &str,
    errors: &mut Errors,
) -> Option<&'static str> {
    let s = string(value, key, errors)?;
    let given = s.value();
    if let Some((_, variant)) = values.iter().find(|(name, _)| *name == given) {
        return Some(variant);
    }
    let hint = values
        .iter()
        .map(|(name, _)| *name)
        .find(|m| {
            given.eq_ignore_ascii_case(m)
                || given.trim_end_matches('s').eq_ignore_ascii_case(m)
                || given.to_ascii_lowercase().starts_with(m)
        })
        .map_or(String::new(), |m| format!("; did you mean `\"{m}\"`?"));
    errors.push_at(s.span(), format!("unknown {key} `{given}`{hint}\n{explain}"));
    None
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
        .map(|k| (kconc_options::edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2 || (key.len() >= 3 && (k.starts_with(key) || key.starts_with(k))))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The docs name every option the attribute accepts: the attribute's
    /// rustdoc (written by build.rs from the table), the README's table of
    /// options, and the README's sample error, which lists them as the
    /// compiler does.
    #[test]
    fn the_docs_name_every_option() {
        let rustdoc = include_str!(concat!(env!("OUT_DIR"), "/options.md"));
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
            if matches!(s.key, "topic" | "group") {
                continue;
            }
            let value = s.written_example();
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

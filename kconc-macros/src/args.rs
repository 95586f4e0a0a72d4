//! Parsing and validating the arguments of `#[subscriber(...)]`.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprArray, ExprLit, Ident, Lit, LitInt, LitStr, Token};

/// Every key the attribute accepts, in the order the docs list them.
pub(crate) const KEYS: &[&str] = &[
    "topic",
    "topics",
    "group",
    "concurrency",
    "ordering",
    "commit_batch_size",
    "commit_interval",
    "shutdown_timeout",
    "name",
    "crate",
];

/// The validated arguments. Durations are in milliseconds.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) topics: Vec<LitStr>,
    pub(crate) group: Option<LitStr>,
    pub(crate) concurrency: Option<LitInt>,
    pub(crate) commit_batch_size: Option<LitInt>,
    pub(crate) commit_interval_ms: Option<u64>,
    pub(crate) shutdown_timeout_ms: Option<u64>,
    pub(crate) name: Option<LitStr>,
    pub(crate) krate: Option<syn::Path>,
}

/// Collects every error so the user sees all mistakes at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn push_at(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    pub(crate) fn into_result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Parses `key = value, ...`. Errors are pushed to `errors`; what could be
/// read is returned so expansion can go on for the IDE's sake.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut raw: Vec<(Ident, Expr)> = Vec::new();
    let parser = |input: ParseStream<'_>| {
        while !input.is_empty() {
            let key = Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            raw.push((key, value));
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        errors.push(syn::Error::new(
            e.span(),
            format!(
                "{e}; expected `key = value` pairs separated by commas, e.g. `topic = \"orders\", group = \"billing\"`"
            ),
        ));
    }

    let mut args = Args::default();
    let mut seen: Vec<String> = Vec::new();
    let mut topic_key: Option<Ident> = None;
    for (key, value) in raw {
        let k = key.unraw().to_string();
        if seen.contains(&k) {
            errors.push_at(key.span(), format!("duplicate `{k}`: give each option once"));
            continue;
        }
        seen.push(k.clone());
        match k.as_str() {
            "topic" | "topics" => {
                if let Some(first) = &topic_key {
                    errors.push_at(
                        key.span(),
                        format!("`{k}` given together with `{first}`: use `topic = \"..\"` for one topic or `topics = [..]` for several, not both"),
                    );
                    continue;
                }
                topic_key = Some(key.clone());
                if k == "topic" {
                    if let Some(t) = non_empty_str(&value, "topic", errors) {
                        args.topics.push(t);
                    }
                } else {
                    args.topics = topic_list(&value, errors);
                }
            }
            "group" => args.group = non_empty_str(&value, "group", errors),
            "concurrency" => {
                args.concurrency = positive_int(
                    &value,
                    "concurrency",
                    "the number of handlers that may run at once",
                    errors,
                )
            }
            "commit_batch_size" => {
                args.commit_batch_size = positive_int(
                    &value,
                    "commit_batch_size",
                    "how many finished messages trigger a commit",
                    errors,
                );
            }
            "commit_interval" => args.commit_interval_ms = duration(&value, "commit_interval", errors),
            "shutdown_timeout" => args.shutdown_timeout_ms = duration(&value, "shutdown_timeout", errors),
            "name" => args.name = non_empty_str(&value, "name", errors),
            "ordering" => {
                if let Some(s) = string(&value, "ordering", errors) {
                    match s.value().as_str() {
                        "unordered" => {}
                        "key" | "partition" => errors.push_at(
                            s.span(),
                            format!("`ordering = \"{}\"` is not supported yet; this version supports `ordering = \"unordered\"` only", s.value()),
                        ),
                        other => errors.push_at(
                            s.span(),
                            format!("unknown ordering `{other}`: this version supports `ordering = \"unordered\"` (`\"key\"` and `\"partition\"` are planned)"),
                        ),
                    }
                }
            }
            "crate" => {
                if let Some(s) = string(&value, "crate", errors) {
                    match s.parse_with(syn::Path::parse_mod_style) {
                        Ok(p) => args.krate = Some(p),
                        Err(_) => errors.push_at(
                            s.span(),
                            "`crate` must be a path, e.g. `crate = \"my_kconc\"` or `crate = \"::kconc_runtime\"`",
                        ),
                    }
                }
            }
            _ => {
                let hint = closest(&k).map_or(String::new(), |c| format!("; did you mean `{c}`?"));
                errors.push_at(
                    key.span(),
                    format!("unknown option `{k}`{hint}\nvalid options: {}", KEYS.join(", ")),
                );
            }
        }
    }
    if topic_key.is_none() {
        errors.push_at(
            Span::call_site(),
            "missing `topic`: add `topic = \"orders\"` (or `topics = [\"a\", \"b\"]`) to #[subscriber(...)]",
        );
    }
    if !seen.iter().any(|k| k == "group") {
        errors.push_at(
            Span::call_site(),
            "missing `group`: add the consumer group, e.g. `group = \"billing\"`, to #[subscriber(...)]",
        );
    }
    args
}

fn lit(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(g) => lit(&g.expr),
        _ => None,
    }
}

fn string(value: &Expr, key: &str, errors: &mut Errors) -> Option<LitStr> {
    match lit(value) {
        Some(Lit::Str(s)) => Some(s.clone()),
        _ => {
            errors.push_at(
                value.span(),
                format!("`{key}` takes a string literal, e.g. `{key} = \"...\"`"),
            );
            None
        }
    }
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
            "`topics` takes a list of string literals, e.g. `topics = [\"orders\", \"refunds\"]`",
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

fn positive_int(value: &Expr, key: &str, what: &str, errors: &mut Errors) -> Option<LitInt> {
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

fn duration(value: &Expr, key: &str, errors: &mut Errors) -> Option<u64> {
    let s = string(value, key, errors)?;
    match parse_duration_ms(&s.value()) {
        Some(0) => {
            errors.push_at(s.span(), format!("`{key}` must be longer than zero"));
            None
        }
        Some(ms) => Some(ms),
        None => {
            errors.push_at(
                s.span(),
                format!("`{key}` takes a duration: a whole number and a unit, `ms`, `s`, `m` or `h`, e.g. `{key} = \"500ms\"` or `\"2s\"`"),
            );
            None
        }
    }
}

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"` to milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// The valid key closest to a misspelt one, if it is close.
fn closest(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 || k.starts_with(key) || key.starts_with(k))
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
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("2"), None);
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("1.5s"), None);
        assert_eq!(parse_duration_ms("10 days"), None);
    }

    #[test]
    fn typo_hints() {
        assert_eq!(closest("concurency"), Some("concurrency"));
        assert_eq!(closest("topc"), Some("topic"));
        assert_eq!(closest("grop"), Some("group"));
        assert_eq!(closest("wibble"), None);
    }
}

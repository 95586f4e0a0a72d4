//! Every name the README documents works, and everything kconc accepts is
//! documented: the flags and environment variables of a `main!()` program,
//! the attribute's options, the `--set` keys; and the README's "Starting
//! your own project" shows `template/` exactly as the suite builds it.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use kconc_runtime::{Cli, Message, Subscriber};

const README: &str = include_str!("../README.md");

/// The README's section under `## title`, up to the next `## `.
fn section(title: &str) -> &'static str {
    let start = README
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("the README has no section `{title}`"));
    let rest = &README[start + 4 + title.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The first cell of each row of the section's first table.
fn first_cells(section: &str) -> Vec<&str> {
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .map(|l| l[2..].split(" | ").next().unwrap())
        .collect()
}

/// The text inside each pair of backticks of `text`.
fn quoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The flag table of "Pointing it at a real cluster": each flag (and the
/// `produce` subcommand's) is accepted by the command line, with a sample
/// value for its placeholder; each long flag the command line declares is
/// in the table.
#[test]
fn every_documented_flag_is_accepted_and_every_flag_is_documented() {
    let table = section("Pointing it at a real cluster");
    let mut documented = BTreeSet::new();
    for cell in first_cells(table) {
        let words: Vec<&str> = quoted(cell)[0].split(' ').collect();
        if words[0] == "produce" {
            documented.insert("produce".to_owned());
            continue;
        }
        let flag = words[0];
        documented.insert(flag.trim_start_matches("--").to_owned());
        if flag == "--help" {
            continue;
        }
        let sample = words.get(1).map(|placeholder| match *placeholder {
            "host:port,..." => "localhost:1",
            "PREFIX" => "staging-",
            "ID" => "pod-1",
            "PROTOCOL" => "consumer",
            "FILE" => "some.file",
            "KEY=VALUE" => "client.id=x",
            "NAME.KEY=VALUE" => "*.retries=1",
            "NAME" => "billing",
            "FILTER" => "info",
            "ADDR" => "127.0.0.1:0",
            "N" => "2",
            "FORMAT" => "yaml",
            // (`parent` needs the `otel` feature.)
            "RELATION" => "link",
            other => panic!("no sample value for {flag} {other}"),
        });
        let mut args = vec!["program", flag];
        args.extend(sample);
        if let Err(e) = Cli::try_from_iter(&args) {
            panic!("{args:?} is documented but refused: {e}");
        }
    }
    // The flags of `produce`, named in its row.
    let produce_row = table.lines().find(|l| l.starts_with("| `produce ")).unwrap();
    for flag in ["--header", "--partition"] {
        assert!(
            produce_row.contains(&format!("`{flag} ")),
            "the produce row lacks {flag}"
        );
    }
    let args = [
        "program",
        "produce",
        "orders",
        "k=v",
        "--header",
        "a=b",
        "--partition",
        "1",
    ];
    Cli::try_from_iter(args).unwrap();

    let command = kconc_runtime::__private::command();
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(documented.contains(long), "--{long} is not in the README's flag table");
        }
    }
    for sub in command.get_subcommands() {
        assert!(
            documented.contains(sub.get_name()),
            "`{}` is not in the README's flag table",
            sub.get_name()
        );
    }
}

/// Every `KCONC_*` variable the README names is read (a `main!()` program
/// runs `--list` with it set; an unknown one would fail it), except the
/// misspelling the README shows being refused; every one the command line
/// declares is in the README's table.
#[test]
fn every_documented_variable_is_read_and_every_variable_is_documented() {
    let config = std::env::temp_dir().join(format!("kconc-documented-{}.properties", std::process::id()));
    std::fs::write(&config, "client.id = documented\n").unwrap();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    for (i, _) in README.match_indices("KCONC_") {
        let end = README[i..]
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .map_or(README.len(), |e| i + e);
        named.insert(&README[i..end]);
    }
    let service = common::example_binary("service");
    for var in &named {
        let value = match *var {
            // The family's prefix and its placeholder: a property of it.
            "KCONC_" | "KCONC_RDKAFKA_" => continue,
            "KCONC_BROKER" => {
                // The README's example of a misspelt variable: refused.
                let out = Command::new(&service).arg("--list").env(var, "x").output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("did you mean KCONC_BROKERS"), "{err}");
                continue;
            }
            "KCONC_BROKERS" => "localhost:1",
            "KCONC_CONFIG" => config.to_str().unwrap(),
            "KCONC_EMBEDDED_PARTITIONS" => "2",
            "KCONC_HTTP" => "127.0.0.1:0",
            "KCONC_WAIT_FOR_TOPICS" => "true",
            "KCONC_GROUP_PROTOCOL" => "consumer",
            "KCONC_LOG" => "info",
            "KCONC_TRACE_RELATION" => "link",
            "KCONC_RDKAFKA_SECURITY_PROTOCOL" => "PLAINTEXT",
            _ => "value",
        };
        let out = Command::new(&service)
            .arg("--list")
            .env_remove("KCONC_BROKERS")
            .env(var, value)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{var}={value} is documented but refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&config);
    let table = section("Pointing it at a real cluster");
    for arg in kconc_runtime::__private::command().get_arguments() {
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                table.contains(&format!("| `{env}` |")),
                "{env} is not in the README's flag table"
            );
        }
    }
}

/// What the README writes from the settings table (`kconc_options`):
/// the attribute's table (every option, its values, default and meaning),
/// the `--set` row's keys and the options it refuses, and the sample
/// error's list of options. So a new option is documented by its row in
/// the settings table: `UPDATE_README=1 cargo test --test documented`
/// writes these parts.
#[test]
fn the_readmes_settings_are_the_settings_tables() {
    let table = kconc_options::readme_table();
    let header = table.lines().next().unwrap().to_owned();
    let options: Vec<&str> = kconc_options::attribute_options().map(|s| s.key).collect();
    // (where the part starts, where it ends, what it must be)
    let parts = [
        (format!("\n{header}\n"), "\n\n", table[..table.len() - 1].to_owned()),
        (
            "override a subscriber's setting from the code: ".to_owned(),
            "; NAME `*`",
            kconc_options::readme_set_keys(),
        ),
        (
            "The attribute-only options (".to_owned(),
            ") are refused",
            kconc_options::readme_attribute_only(),
        ),
        ("valid options: ".to_owned(), "\n", options.join(", ")),
    ];
    let mut readme = README.to_owned();
    for (start, end, wanted) in &parts {
        // The table's header is part of it.
        let from = readme
            .find(start.as_str())
            .unwrap_or_else(|| panic!("the README lacks `{start}`"));
        let from = if start.starts_with('\n') {
            from + 1
        } else {
            from + start.len()
        };
        let to = from
            + readme[from..]
                .find(end)
                .unwrap_or_else(|| panic!("no `{end}` after `{start}`"));
        readme.replace_range(from..to, wanted);
    }
    if readme != README && std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"), readme).unwrap();
        return;
    }
    for (start, _, wanted) in &parts {
        assert!(
            README.contains(wanted.as_str()),
            "the README's part after `{}` is not made from the settings table; run \
             `UPDATE_README=1 cargo test --test documented` to write it:\n{wanted}",
            start.trim()
        );
    }
    assert_eq!(readme, README, "the README's generated parts");
    let documented: BTreeSet<&str> = first_cells(section("The attribute"))
        .into_iter()
        .map(|cell| quoted(cell)[0])
        .collect();
    assert_eq!(
        documented,
        options.into_iter().collect(),
        "the README's attribute table against the attribute's options"
    );
}

/// The `--set` row names exactly the keys `--set` takes, each accepted with
/// its example value; the options it names as fixed by the code are
/// refused as such; and every `--set 'NAME.KEY=VALUE'` the README shows is
/// accepted.
#[test]
fn every_documented_set_key_is_accepted_and_every_key_is_documented() {
    let table = section("Pointing it at a real cluster");
    let row = table.lines().find(|l| l.starts_with("| `--set ")).unwrap();
    let listed = &row[row.find("from the code: ").unwrap()..row.find("; NAME `*`").unwrap()];
    // Each key is the first quoted word of its item; what follows in
    // parentheses are its values.
    let mut keys = BTreeSet::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in listed["from the code: ".len()..].chars().chain([',']) {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                keys.insert(quoted(&item)[0].to_owned());
                item.clear();
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    let sub = || Subscriber::new("billing", ["orders"], "billing", |_m: Message| async {}).dead_letter("orders.dlq");
    for key in &keys {
        let example = kconc_options::setting(key).map_or("x", |s| s.example);
        sub()
            .set(key, example)
            .unwrap_or_else(|e| panic!("--set `{key}={example}` is documented but refused: {e}"));
    }
    let settable: BTreeSet<String> = kconc_options::settable().map(|s| s.key.to_owned()).collect();
    assert_eq!(keys, settable, "the README's --set row against the keys --set takes");

    let fixed = &row[row.find("The attribute-only options (").unwrap()..];
    for key in quoted(&fixed[..fixed.find(')').unwrap()]) {
        let err = sub().set(key, "x").unwrap_err().to_string();
        assert!(err.contains("is fixed by the code"), "{key}: {err}");
    }
    let mut shown = 0;
    for (i, _) in README.match_indices("--set '") {
        let text = &README[i + "--set '".len()..];
        let set = &text[..text.find('\'').unwrap()];
        let (target, value) = set.split_once('=').unwrap();
        let key = target.rsplit_once('.').unwrap().1;
        sub()
            .set(key, value)
            .unwrap_or_else(|e| panic!("`--set '{set}'` is shown but refused: {e}"));
        shown += 1;
    }
    assert!(shown >= 2, "the README's --set examples were not found");
}

/// "Starting your own project" shows `template/`'s files as they are.
#[test]
fn the_readmes_new_project_is_the_template_the_suite_builds() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["template/Cargo.toml", "template/src/main.rs", "template/src/tests.rs"] {
        // Four backticks: the files hold three-backtick blocks of their own.
        let marker = format!("<!-- {file} -->\n````");
        let at = README
            .find(&marker)
            .unwrap_or_else(|| panic!("the README does not show {file}"));
        let block = &README[at + marker.len()..];
        let block = &block[block.find('\n').unwrap() + 1..];
        let block = &block[..block.find("\n````\n").unwrap() + 1];
        let actual = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            block == actual,
            "the README's copy of {file} differs from the file: run `python3 scripts/sync-readme-template`"
        );
    }
}

/// Each default the settings table writes as a value is the runtime's: a
/// subscriber with it set is the subscriber as built.
#[test]
fn the_documented_defaults_are_the_runtimes() {
    let built = || Subscriber::new("s", ["t"], "g", |_m: Message| async {});
    let mut checked = 0;
    for setting in kconc_options::SETTINGS {
        let key = setting.key;
        // A value in backticks, as --set writes it.
        let value = setting.default.strip_prefix('`').and_then(|v| v.strip_suffix('`'));
        if let (true, Some(value)) = (setting.set, value.filter(|v| !v.contains('`'))) {
            let mut set = built();
            set.set(key, value.trim_matches('"')).unwrap();
            assert_eq!(format!("{set:?}"), format!("{:?}", built()), "the default of `{key}`");
            checked += 1;
        }
    }
    assert!(checked >= 13, "{checked} defaults checked against the runtime");
}

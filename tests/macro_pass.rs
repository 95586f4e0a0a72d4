//! The `#[subscriber]` attributes and handlers that must compile, the
//! fixtures in `tests/ui/pass/` (see `tests/ui/README.md`). Each fixture is
//! a module of this test, compiled with the rest of the suite (trybuild
//! built each as a program of its own, and only ran its empty `main`); the
//! test checks that every handler in them registered.
#![allow(dead_code)] // each fixture's empty `main`

// `crate_rename.rs` uses the runtime under another name, given by an
// `extern crate` at the crate root (as a Cargo rename would give it).
extern crate kconc_runtime as kconc_renamed;

#[path = "ui/pass/all_options.rs"]
mod all_options;

#[path = "ui/pass/anyhow_return.rs"]
mod anyhow_return;

#[path = "ui/pass/batch.rs"]
mod batch;

#[path = "ui/pass/crate_rename.rs"]
mod crate_rename;

#[path = "ui/pass/custom_extractor.rs"]
mod custom_extractor;

#[path = "ui/pass/error_policy.rs"]
mod error_policy;

#[path = "ui/pass/exactly_once.rs"]
mod exactly_once;

#[path = "ui/pass/extractors.rs"]
mod extractors;

#[path = "ui/pass/handler_named_like_locals.rs"]
mod handler_named_like_locals;

#[path = "ui/pass/minimal.rs"]
mod minimal;

#[path = "ui/pass/ordering_key.rs"]
mod ordering_key;

#[path = "ui/pass/ordering_partition.rs"]
mod ordering_partition;

#[path = "ui/pass/state_and_reply.rs"]
mod state_and_reply;

#[path = "ui/pass/through_macro_rules.rs"]
mod through_macro_rules;

#[path = "ui/pass/unit_return.rs"]
mod unit_return;

/// The `#[subscriber]`s written in the fixtures.
const HANDLERS: usize = 29;

#[test]
fn every_handler_in_the_fixtures_registers() {
    let registered = kconc_runtime::testing::registered();
    assert_eq!(
        registered.len(),
        HANDLERS,
        "registered: {:?}",
        registered.iter().map(|s| s.name()).collect::<Vec<_>>()
    );
    // One with every option: its name and topics are the attribute's.
    let billing = registered.iter().find(|s| s.name() == "billing");
    assert_eq!(
        billing.map(|s| (s.topics().to_vec(), s.group().to_owned())),
        Some((vec!["orders".to_owned(), "refunds".to_owned()], "billing".to_owned()))
    );
}

/// The fixtures whose `main` checks what their attribute set.
#[test]
fn the_fixtures_checks_hold() {
    ordering_key::main();
    ordering_partition::main();
    state_and_reply::main();
}

//! Compile-time checks of `#[subscriber]`: the error (and its span) for
//! each mistake. What must compile is `tests/macro_pass.rs`. See
//! `tests/ui/README.md`.

// With the `postgres` feature, sqlx brings more types named like kconc's
// (`Json`), and the compiler then names types by their full paths: the
// expected messages are those of the default features, which
// `scripts/test` runs this test with, in a stage of its own.
#[test]
#[cfg_attr(
    feature = "postgres",
    ignore = "the expected compiler messages are the default features' (scripts/test runs them so)"
)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}

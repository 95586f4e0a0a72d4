//! Compile-time checks of `#[subscriber]`: what must compile, and the error
//! (and its span) for each mistake. See `tests/ui/README.md`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

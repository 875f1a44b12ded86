//! Compile errors of `#[dtask]` for unsupported signatures.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

//! `#[goverse::object]` misuse is a compile error pointing at the offending token.

#[test]
fn macro_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}

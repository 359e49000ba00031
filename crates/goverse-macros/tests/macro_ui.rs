//! `#[goverse::object]` misuse is a compile error pointing at the offending token. These live
//! here, not in the facade crate, so trybuild's own build has only the facade's dependencies
//! (and checks, never builds); the shapes that compile are a test of the facade.

#[test]
fn macro_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail_*.rs");
}

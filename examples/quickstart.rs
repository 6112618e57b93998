//! Placeholder; replaced by the quickstart issue.
fn main() {}

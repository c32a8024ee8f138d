//! The `wanrt` command line.
fn main() {}

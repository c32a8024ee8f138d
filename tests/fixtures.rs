//! The fixture harness (to be written).
fn main() {}

//! Conformance suites (the `testing` feature).

pub mod store;

//! Conformance suites (the `testing` feature).

#[cfg(feature = "protocol")]
pub mod executor;
pub mod integration;
pub mod secrets;
pub mod store;

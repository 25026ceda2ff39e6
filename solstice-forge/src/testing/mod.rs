//! Test support, not a stable API: [`FakeForge`], an HTTP server that
//! plays the parts of the GitHub and Forgejo APIs Solstice uses, and
//! [`reporter`], the conformance suite every
//! [`StatusReporter`](crate::StatusReporter) implementation must pass.

mod fake;
pub mod reporter;

pub use fake::{CheckRun, CommitStatus, FakeForge, Recorded};

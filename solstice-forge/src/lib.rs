//! # solstice-forge
//!
//! The `ForgeAdapter` (verify and normalise webhooks into `ForgeEvent`s, fetch
//! a workflow file at a commit) and `StatusReporter` (commit statuses, GitHub
//! check runs) traits, with GitHub and Forgejo implementations.
//!
//! Nothing is implemented here yet.

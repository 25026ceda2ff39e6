//! # solstice-forge
//!
//! The `ForgeAdapter` (verify and normalise webhooks into `ForgeEvent`s, fetch
//! a workflow file at a commit) and `StatusReporter` (commit statuses, GitHub
//! check runs) traits, with GitHub and Forgejo implementations.
//!
//! So far: webhook signatures ([`verify`], [`sign`]) for both forges. The
//! rest (events, adapters, reporters) is the next step of the forge work;
//! the crate is not published until it is there.

mod signature;

pub use signature::{Forge, SignatureError, sign, verify};

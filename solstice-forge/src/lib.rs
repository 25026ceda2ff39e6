//! # solstice-forge
//!
//! The `ForgeAdapter` (verify and normalise webhooks into `ForgeEvent`s, fetch
//! a workflow file at a commit) and `StatusReporter` (commit statuses, GitHub
//! check runs) traits, with GitHub and Forgejo implementations.
//!
//! So far: webhook signatures ([`verify`], [`sign`]) and reading a
//! delivery ([`parse`] into a [`ForgeEvent`]) for both forges. The adapters
//! and reporters are the next step of the forge work; the crate is not
//! published until they are there.

mod event;
mod signature;

pub use event::{
    Delivery, EventKind, ForgeEvent, MAX_PAYLOAD, PayloadError, PullRequestAction, parse,
};
pub use signature::{Forge, SignatureError, sign, verify};

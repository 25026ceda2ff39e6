//! # solstice-forge
//!
//! Solstice CI's forge layer: webhooks in, job states out.
//!
//! - [`ForgeAdapter`]: verify a webhook delivery ([`verify`]) and read it
//!   into a [`ForgeEvent`] ([`parse`]), fetch the workflow file at a
//!   commit, give a job short-lived clone credentials.
//! - [`StatusReporter`]: tell the forge how a job is doing, idempotently,
//!   retried with backoff where a retry can help ([`RetryPolicy`]).
//! - [`GitHub`] (a GitHub App's check runs, or commit statuses with a
//!   plain token) and [`Forgejo`] (commit statuses) implement both.
//!
//! The crate does not depend on the engine: the daemon composes the two.
//!
//! ```
//! use solstice_forge::{Delivery, Forge, ForgeAdapter, Forgejo, Headers, Secret, sign};
//!
//! let forgejo = Forgejo::new("https://codeberg.org", Secret::new("api-token"), Secret::new("hook-secret"))?;
//! let body = br#"{"zen": "hello"}"#;
//! let headers = Headers::new()
//!     .with("X-Forgejo-Event", "ping")
//!     .with("X-Forgejo-Delivery", "d-1")
//!     .with("X-Forgejo-Signature", sign(Forge::Forgejo, b"hook-secret", body));
//! let received = forgejo.receive(&headers, body)?;
//! assert_eq!(received.delivery, Delivery::Ping);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod adapter;
mod event;
mod forgejo;
mod github;
mod http;
mod origin;
mod secret;
mod signature;
mod status;
pub mod text;
mod time;
mod util;

#[cfg(feature = "testing")]
pub mod testing;

pub use adapter::{
    BoxError, CloneCredentials, ForgeAdapter, ForgeError, Headers, MAX_DELIVERY_ID,
    MAX_WORKFLOW_FILE, Received, Repo, WebhookError,
};
pub use event::{
    Delivery, EventKind, ForgeEvent, MAX_PAYLOAD, PayloadError, PullRequestAction, Rerun, parse,
};
pub use forgejo::Forgejo;
pub use github::{GITHUB_API, GitHub, TOKEN_REFRESH_MARGIN};
pub use http::RetryPolicy;
pub use origin::{ForgeOrigin, credentials_may_go_to};
pub use secret::Secret;
pub use signature::{Forge, SignatureError, sign, verify};
pub use status::{
    CHECK_TEXT_CHARS, Conclusion, JobReport, JobState, STATUS_DESCRIPTION_CHARS, StatusReporter,
    StepLine,
};

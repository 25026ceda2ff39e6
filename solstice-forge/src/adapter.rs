//! [`ForgeAdapter`]: what the integration layer needs from a forge on the
//! way in (verify and read a webhook delivery, fetch the workflow at a
//! commit, clone credentials for a job), and the vocabulary it shares
//! with [`StatusReporter`](crate::StatusReporter).

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Delivery, Forge, PayloadError, Secret, SignatureError};

/// Boxed error, the source of a [`ForgeError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest workflow file fetched from a forge (the workflow parser's
/// own limit is 1 MiB).
pub const MAX_WORKFLOW_FILE: usize = 1 << 20;

/// A repository on a forge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Repo {
    /// `owner/name`.
    pub full_name: String,
    /// The GitHub App installation that covers it, when the delivery said.
    pub installation: Option<u64>,
}

impl Repo {
    /// A repository by its `owner/name`.
    pub fn new(full_name: impl Into<String>) -> Repo {
        Repo {
            full_name: full_name.into(),
            installation: None,
        }
    }

    /// Sets the GitHub App installation.
    pub fn with_installation(mut self, installation: Option<u64>) -> Repo {
        self.installation = installation;
        self
    }

    /// `owner/name` as URL path segments, refused unless both parts are
    /// plain names (a repository name comes from a delivery: it must not
    /// steer a request to another path).
    pub fn path(&self) -> Result<String, ForgeError> {
        let invalid = |why: &str| ForgeError::Invalid {
            what: "repository name".into(),
            why: format!("`{}`: {why}", crate::text::head_chars(&self.full_name, 100)),
        };
        let (owner, name) = self
            .full_name
            .split_once('/')
            .ok_or_else(|| invalid("not owner/name"))?;
        for part in [owner, name] {
            let plain = !part.is_empty()
                && part.len() <= 100
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !plain {
                return Err(invalid("a part is not a plain name"));
            }
        }
        Ok(format!("{owner}/{name}"))
    }
}

/// The headers of a webhook request, by lower-case name.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds one.
    pub fn insert(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Adds one (builder style).
    pub fn with(mut self, name: &str, value: impl Into<Vec<u8>>) -> Headers {
        self.insert(name, value);
        self
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn first(&self, names: &[&str]) -> Option<&[u8]> {
        names.iter().find_map(|n| self.get(n))
    }
}

/// Longest delivery id accepted (GitHub's are UUIDs).
pub const MAX_DELIVERY_ID: usize = 128;

/// Why a webhook request was refused. Every variant is the sender's
/// fault: the endpoint answers 4xx and does nothing else.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// Missing, malformed or wrong signature (401).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A header the forge always sends is missing or unusable (400).
    #[error("the `{0}` header is missing or not a short printable text")]
    Header(&'static str),
    /// The body is not a delivery Solstice can read (400, or 413 when too
    /// large).
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// Credentials a job clones its repository with: short-lived.
#[derive(Clone)]
#[non_exhaustive]
pub struct CloneCredentials {
    /// User name for HTTP basic authentication.
    pub username: String,
    /// The token.
    pub password: Secret,
    /// When the token stops working, if known.
    pub expires_at: Option<SystemTime>,
}

impl fmt::Debug for CloneCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneCredentials")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why talking to a forge's API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForgeError {
    /// The forge could not be reached (after the retries).
    #[error("{what}: the forge cannot be reached")]
    Connect {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The forge refused (a 4xx other than a rate limit, or a 5xx after
    /// the retries).
    #[error("{what}: the forge answered {status}: {message}")]
    Status {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The forge's message (cut, control characters removed).
        message: String,
    },
    /// The forge asked to wait longer than a report may.
    #[error("{what}: rate limited for {}s more", wait.as_secs())]
    RateLimited {
        /// The request.
        what: String,
        /// How long it asked to wait.
        wait: Duration,
    },
    /// The forge's answer is not what its API documents.
    #[error("{what}: the answer cannot be read")]
    Decode {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// An answer larger than accepted.
    #[error("{what}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The request.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// Something Solstice was given cannot be sent (a repository name that
    /// is not `owner/name`, a private key that does not load).
    #[error("{what}: {why}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        why: String,
    },
}

impl ForgeError {
    /// The HTTP status the forge answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A forge, on the way in.
#[async_trait]
pub trait ForgeAdapter: Send + Sync + fmt::Debug {
    /// Which forge this is.
    fn forge(&self) -> Forge;

    /// Verifies a webhook request's signature with the configured secret,
    /// then reads it. Nothing in the body is looked at before the
    /// signature matches. Pure: no I/O.
    fn receive(&self, headers: &Headers, body: &[u8]) -> Result<Received, WebhookError>;

    /// The file at `path` in `repo` at `commit`, or `None` when it does
    /// not exist. At most [`MAX_WORKFLOW_FILE`] bytes. Retried like every
    /// request; safe to call again.
    async fn fetch_file(
        &self,
        repo: &Repo,
        commit: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError>;

    /// Credentials for cloning `repo`, short-lived where the forge allows
    /// (a GitHub App installation token); `None` when clones need none.
    async fn clone_credentials(&self, repo: &Repo) -> Result<Option<CloneCredentials>, ForgeError>;

    /// The commit a branch, tag or commit (`main`, `refs/heads/main`,
    /// `v1.2`, a sha) of `repo` names now; `None` when it names none. For
    /// runs started by hand. The default: this adapter cannot tell.
    async fn resolve_commit(
        &self,
        repo: &Repo,
        reference: &str,
    ) -> Result<Option<String>, ForgeError> {
        let _ = (repo, reference);
        Err(ForgeError::Invalid {
            what: "reference".into(),
            why: "this forge adapter cannot resolve references; give a commit".into(),
        })
    }
}

/// A reference as the forges' APIs take it in a path: a branch or tag
/// name (`refs/heads/` and `refs/tags/` dropped) or a commit; only
/// letters, digits and `._-/` (no `..`, no empty segment), at most 255
/// bytes, so that it cannot reach another endpoint.
pub(crate) fn reference_path(reference: &str) -> Result<String, ForgeError> {
    let plain = reference
        .strip_prefix("refs/heads/")
        .or_else(|| reference.strip_prefix("refs/tags/"))
        .unwrap_or(reference);
    let fine = !plain.is_empty()
        && reference.len() <= 255
        && plain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && plain
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if fine {
        Ok(plain.to_string())
    } else {
        Err(ForgeError::Invalid {
            what: "reference".into(),
            why: format!(
                "`{}` is not a branch, tag or commit name",
                crate::text::head_chars(reference, 100)
            ),
        })
    }
}

/// Whether `text` looks like a full commit id (40 or 64 hex digits).
pub(crate) fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A verified webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// The delivery id (`X-GitHub-Delivery`, `X-Forgejo-Delivery`): the
    /// same id is the same delivery sent again.
    pub id: String,
    /// The event name (`X-GitHub-Event`, `X-Forgejo-Event`).
    pub event: String,
    /// What it asks for.
    pub delivery: Delivery,
}

/// The header names a forge sends its signature, event and delivery id in.
fn header_names(forge: Forge) -> ([&'static str; 2], [&'static str; 2], [&'static str; 2]) {
    match forge {
        Forge::GitHub => (
            ["x-hub-signature-256", "x-hub-signature-256"],
            ["x-github-event", "x-github-event"],
            ["x-github-delivery", "x-github-delivery"],
        ),
        Forge::Forgejo => (
            ["x-forgejo-signature", "x-gitea-signature"],
            ["x-forgejo-event", "x-gitea-event"],
            ["x-forgejo-delivery", "x-gitea-delivery"],
        ),
    }
}

/// [`ForgeAdapter::receive`] for a forge with a webhook secret: shared by
/// the GitHub and Forgejo adapters.
pub(crate) fn receive(
    forge: Forge,
    secret: &Secret,
    headers: &Headers,
    body: &[u8],
) -> Result<Received, WebhookError> {
    let (signature, event, id) = header_names(forge);
    // The size first: a body over the limit is refused as such (413), before
    // spending a hash on it.
    if body.len() > crate::MAX_PAYLOAD {
        return Err(PayloadError::TooLarge { len: body.len() }.into());
    }
    let given = headers.first(&signature);
    // A GitHub webhook whose delivery carries only the SHA-1 signature
    // (`X-Hub-Signature`): signed, but not in a way Solstice accepts.
    if given.is_none() && forge == Forge::GitHub && headers.first(&["x-hub-signature"; 2]).is_some()
    {
        return Err(SignatureError::Sha1Only.into());
    }
    crate::verify(forge, secret.expose().as_bytes(), given, body)?;
    let short_text = |value: Option<&[u8]>, name| {
        value
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_DELIVERY_ID
                    && v.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_string)
            .ok_or(WebhookError::Header(name))
    };
    let event = short_text(headers.first(&event), event[0])?;
    let id = short_text(headers.first(&id), id[0])?;
    let delivery = crate::parse(forge, &event, &id, body)?;
    Ok(Received {
        id,
        event,
        delivery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_cannot_leave_their_path() {
        assert_eq!(
            Repo::new("octo/hello.world").path().ok().as_deref(),
            Some("octo/hello.world")
        );
        for bad in [
            "octo", "octo/..", "../x", "a/b/c", "a/b?x=1", "a/b#", "a/ b", "/b", "a/",
        ] {
            assert!(Repo::new(bad).path().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sha1_only_github_delivery_is_told_what_is_required() {
        let secret = Secret::new("s");
        let body = br#"{"zen":"hi"}"#;
        let mut headers = Headers::new();
        headers.insert("x-github-event", b"ping");
        headers.insert("x-github-delivery", b"d1");
        headers.insert(
            "x-hub-signature",
            b"sha1=0123456789abcdef0123456789abcdef01234567",
        );
        let err = receive(Forge::GitHub, &secret, &headers, body).expect_err("refused");
        let text = err.to_string();
        assert!(
            matches!(err, WebhookError::Signature(SignatureError::Sha1Only)),
            "{text}"
        );
        assert!(text.contains("X-Hub-Signature-256"), "{text}");
        // Not signed at all is still that.
        let mut bare = Headers::new();
        bare.insert("x-github-event", b"ping");
        bare.insert("x-github-delivery", b"d2");
        let err = receive(Forge::GitHub, &secret, &bare, body).expect_err("refused");
        assert!(matches!(
            err,
            WebhookError::Signature(SignatureError::Missing)
        ));
        // With both headers, the SHA-256 one decides.
        headers.insert(
            "x-hub-signature-256",
            crate::sign(Forge::GitHub, b"s", body).as_bytes(),
        );
        assert!(receive(Forge::GitHub, &secret, &headers, body).is_ok());
    }
}

//! [`SecretStore`]: where a job's secrets come from. A workflow declares
//! the names of the secrets it needs; the store holds the values, per
//! repository (the *scope*, `owner/name`). Values never come from the
//! workflow file, and a pull request from a fork gets none.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// Boxed error, the source of a [`SecretError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why secrets could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The scope is not a repository name the store can look up
    /// (`owner/name`, plain names).
    #[error("`{0}` is not a repository name")]
    Scope(String),
    /// The store failed (unreachable, refused, unreadable).
    #[error("the secret store failed")]
    Backend(#[source] BoxError),
}

/// Secret values per repository.
///
/// Contract (checked by `solstice_core::testing::secrets`): `get` returns
/// the values of the names the store holds for `scope` and leaves out the
/// others (a missing secret is not an error here: the engine decides);
/// scopes never see each other's values, whatever a scope's text is; a
/// scope that is not `owner/name` is [`SecretError::Scope`]. Safe to call
/// again; no side effects.
#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The values of `names` held for `scope`.
    async fn get(
        &self,
        scope: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, SecretError>;
}

/// Splits a scope into `(owner, name)`, refusing anything but two plain
/// names (letters, digits, `-`, `_`, `.`; not `.` or `..`), so that a
/// store may use them as path segments.
pub fn scope_parts(scope: &str) -> Result<(&str, &str), SecretError> {
    let bad = || SecretError::Scope(scope.chars().take(100).collect());
    let (owner, name) = scope.split_once('/').ok_or_else(bad)?;
    for part in [owner, name] {
        let plain = !part.is_empty()
            && part.len() <= 100
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain {
            return Err(bad());
        }
    }
    Ok((owner, name))
}

/// A secret name as the workflow language allows it: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_secret_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 128
}

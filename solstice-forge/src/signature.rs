//! Webhook signatures: HMAC-SHA256 of the raw body with the webhook's
//! secret, compared in constant time.
//!
//! - GitHub sends `X-Hub-Signature-256: sha256=<hex>`.
//! - Forgejo (and Gitea) send the bare hex in `X-Forgejo-Signature`
//!   (`X-Gitea-Signature`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Which forge signed a delivery (their headers differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Forge {
    /// GitHub (and GitHub Enterprise).
    GitHub,
    /// Forgejo, and Gitea, which signs the same way.
    Forgejo,
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No signature header.
    #[error("the delivery is not signed")]
    Missing,
    /// The header is not in the forge's format (`sha256=` and 64 hex
    /// digits for GitHub, 64 hex digits for Forgejo).
    #[error("the signature header is malformed")]
    Malformed,
    /// The signature does not match the body and the secret.
    #[error("the signature does not match")]
    Mismatch,
    /// Signed with SHA-1 only (GitHub's `X-Hub-Signature`), which is not
    /// accepted.
    #[error(
        "the delivery is signed with SHA-1 only (X-Hub-Signature); Solstice requires X-Hub-Signature-256 (HMAC-SHA256)"
    )]
    Sha1Only,
}

/// Checks `header` (the signature header's value, if any) against `body`
/// signed with `secret`. Nothing about the body is trusted before this
/// returns `Ok`.
pub fn verify(
    forge: Forge,
    secret: &[u8],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digits = match forge {
        Forge::GitHub => header
            .strip_prefix(b"sha256=")
            .ok_or(SignatureError::Malformed)?,
        Forge::Forgejo => header,
    };
    // Exactly 64 hex digits: a truncated signature is not a shorter match.
    if hex_digits.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The signature header value a forge would send for `body` (for tests and
/// tools that replay deliveries).
pub fn sign(forge: Forge, secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = hex::encode(mac.finalize().into_bytes());
    match forge {
        Forge::GitHub => format!("sha256={digest}"),
        Forge::Forgejo => digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published test vector (docs: validating webhook deliveries).
    const VECTOR_SECRET: &[u8] = b"It's a Secret to Everybody";
    const VECTOR_BODY: &[u8] = b"Hello, World!";
    const VECTOR_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_published_vector() {
        assert_eq!(
            sign(Forge::GitHub, VECTOR_SECRET, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        assert_eq!(
            verify(
                Forge::GitHub,
                VECTOR_SECRET,
                Some(VECTOR_SIGNATURE.as_bytes()),
                VECTOR_BODY
            ),
            Ok(())
        );
        let bare = &VECTOR_SIGNATURE["sha256=".len()..];
        assert_eq!(
            verify(
                Forge::Forgejo,
                VECTOR_SECRET,
                Some(bare.as_bytes()),
                VECTOR_BODY
            ),
            Ok(()),
            "Forgejo signs the same way, without the prefix"
        );
    }

    #[test]
    fn bad_signatures_are_refused_with_their_reason() {
        let good = sign(Forge::GitHub, b"s3cret", b"{}");
        let check = |header: Option<&str>, body: &[u8]| {
            verify(Forge::GitHub, b"s3cret", header.map(str::as_bytes), body)
        };
        assert_eq!(check(Some(&good), b"{}"), Ok(()));
        assert_eq!(check(None, b"{}"), Err(SignatureError::Missing));
        assert_eq!(check(Some(&good), b"{ }"), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(Forge::GitHub, b"other", Some(good.as_bytes()), b"{}"),
            Err(SignatureError::Mismatch)
        );
        let bare = good.trim_start_matches("sha256=");
        for malformed in [
            bare,                    // GitHub wants the prefix
            "sha256=",               // empty
            &good[..good.len() - 2], // truncated
            "sha1=0123456789abcdef0123456789abcdef01234567",
            &format!("sha256={}", "zz".repeat(32)), // not hex
            &format!("{good}00"),                   // too long
        ] {
            assert_eq!(
                check(Some(malformed), b"{}"),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
        assert_eq!(
            verify(Forge::Forgejo, b"s3cret", Some(good.as_bytes()), b"{}"),
            Err(SignatureError::Malformed),
            "Forgejo's header is bare hex"
        );
    }
}

//! The admin token: how a request presents it (`Authorization: Bearer T`
//! for the API and `ciadm`; HTTP Basic with the token as the password, so
//! a browser can open the pages of private repositories), and the
//! comparison, done on SHA-256 digests so it takes the same time whatever
//! the given token's length or content.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// The token a request presents, if any: a Bearer token, or a Basic
/// password (the user name is not looked at).
pub fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest)?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Whether `given` is `token`: their digests compared in constant time
/// (no early return on a length or a first differing byte).
pub fn same_token(given: &str, token: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether the request carries the configured admin token (`false` when
/// none is configured).
pub fn is_admin(token: Option<&solstice_forge::Secret>, headers: &HeaderMap) -> bool {
    match (token, presented(headers)) {
        (Some(token), Some(given)) => same_token(&given, token.expose()),
        _ => false,
    }
}

/// Standard base64 (padding optional); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=');
    if text.len() > 4096 || text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn bearer_and_basic_present_the_token() {
        assert_eq!(presented(&with("Bearer abc")).as_deref(), Some("abc"));
        // "admin:s3cret:with:colons"
        assert_eq!(
            presented(&with("Basic YWRtaW46czNjcmV0OndpdGg6Y29sb25z")).as_deref(),
            Some("s3cret:with:colons")
        );
        // ":tok" (no user name)
        assert_eq!(presented(&with("basic OnRvaw==")).as_deref(), Some("tok"));
        for bad in ["Basic !!!!", "Basic YWJj", "Digest x", "Bearer", ""] {
            let h = if bad.is_empty() {
                HeaderMap::new()
            } else {
                with(bad)
            };
            assert_eq!(presented(&h), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_compare_by_digest() {
        assert!(same_token("admin-token", "admin-token"));
        assert!(!same_token("admin-token", "admin-tokem"));
        assert!(!same_token("admin-token-longer", "admin-token"));
        assert!(!same_token("", "admin-token"));
        let secret = solstice_forge::Secret::new("t0ken");
        assert!(is_admin(Some(&secret), &with("Bearer t0ken")));
        assert!(!is_admin(None, &with("Bearer t0ken")));
        assert!(!is_admin(Some(&secret), &HeaderMap::new()));
    }
}

//! Job tokens: random, single-use, stored only as a hash.

use sha2::{Digest, Sha256};

pub(super) fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Tokens are stored hashed: a leaked database does not leak live tokens.
pub(super) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

//! The runner protocol (`proto/runner.proto`), compiled with `protox` and
//! `tonic`. The job token travels as `authorization: Bearer <token>`.

#[allow(
    missing_docs,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("solstice.runner.v1");
}

/// The metadata key carrying the job token.
pub const AUTHORIZATION: &str = "authorization";

/// The metadata key carrying the report session (see `JobSpec.session`).
pub const SESSION: &str = "x-solstice-session";

/// `Bearer <token>` for the metadata.
pub(crate) fn bearer(
    token: &str,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("the token is not valid ASCII"))
}

/// The token from a request's metadata.
#[cfg(feature = "engine")]
pub(crate) fn token_of<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
    request
        .metadata()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .ok_or_else(|| tonic::Status::unauthenticated("missing job token"))
}

/// The step number of the runner's own lines (checkout, ...).
pub(crate) const SYSTEM_STEP: u32 = u32::MAX;

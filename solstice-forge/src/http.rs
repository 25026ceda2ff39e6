//! The one HTTP path to a forge's API: every request goes through
//! [`Api::send`], which retries what may succeed later (5xx, connection
//! errors, rate limits, honouring `Retry-After` and `x-ratelimit-reset`)
//! and never what will not (any other 4xx).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Client, RequestBuilder, Response, StatusCode};

use crate::ForgeError;

/// How every request to a forge is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubled for each later one.
    pub first_delay: Duration,
    /// Longest wait between two tries that the backoff chooses.
    pub max_delay: Duration,
    /// Longest wait a forge may ask for (`Retry-After`, a rate-limit
    /// reset). A longer one fails the report at once with
    /// [`ForgeError::RateLimited`] rather than holding it for an hour.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Sets the number of tries.
    pub fn with_attempts(mut self, attempts: u32) -> RetryPolicy {
        self.attempts = attempts.max(1);
        self
    }

    /// Sets the first backoff delay.
    pub fn with_first_delay(mut self, delay: Duration) -> RetryPolicy {
        self.first_delay = delay;
        self
    }

    /// Sets the longest wait a forge may ask for.
    pub fn with_max_wait(mut self, wait: Duration) -> RetryPolicy {
        self.max_wait = wait;
        self
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .first_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        // Up to a quarter of jitter, so that many reporters do not retry in step.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        exp + exp.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// Longest error body kept in a [`ForgeError::Status`].
const ERROR_BODY_CHARS: usize = 512;

/// User agent for every request (GitHub refuses requests without one).
pub(crate) const USER_AGENT: &str = concat!("solstice-ci/", env!("CARGO_PKG_VERSION"));

/// A client and its retry rules.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: Client,
    retry: RetryPolicy,
}

impl Api {
    pub(crate) fn new(retry: RetryPolicy) -> Api {
        let client = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // Credentials must not follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Api { client, retry }
    }

    pub(crate) fn with_retry(mut self, retry: RetryPolicy) -> Api {
        self.retry = retry;
        self
    }

    /// Sends what `build` makes, retrying as the policy says. Returns the
    /// response when it is a success or a 404 (the caller decides what a
    /// missing thing means); any other answer is an error.
    pub(crate) async fn send(
        &self,
        what: &str,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, ForgeError> {
        let mut retry = 0;
        loop {
            let last = retry + 1 >= self.retry.attempts;
            let wait = match build(&self.client).send().await {
                Err(e) => {
                    if last || !(e.is_connect() || e.is_timeout() || e.is_request()) {
                        return Err(ForgeError::Connect {
                            what: what.to_string(),
                            source: Box::new(e),
                        });
                    }
                    tracing::debug!(what, error = %e, "forge unreachable; retrying");
                    self.retry.backoff(retry)
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() || status == StatusCode::NOT_FOUND {
                        return Ok(resp);
                    }
                    let asked = asked_wait(&resp);
                    let retryable = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || (status == StatusCode::FORBIDDEN && asked.is_some());
                    if let Some(wait) = asked
                        && retryable
                        && wait > self.retry.max_wait
                    {
                        return Err(ForgeError::RateLimited {
                            what: what.to_string(),
                            wait,
                        });
                    }
                    if !retryable || last {
                        return Err(status_error(what, resp).await);
                    }
                    tracing::debug!(what, %status, "forge asked to retry");
                    asked.unwrap_or_else(|| self.retry.backoff(retry))
                }
            };
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }
}

/// How long the forge asked to wait: `Retry-After` (seconds or an HTTP
/// date), or, with no requests left, until `x-ratelimit-reset`.
fn asked_wait(resp: &Response) -> Option<Duration> {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(after) = header("retry-after") {
        let after = after.trim();
        if let Ok(secs) = after.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(after) {
            return Some(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
    }
    if header("x-ratelimit-remaining").map(str::trim) == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|r| r.trim().parse::<u64>().ok())
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // One second more: the reset is a whole second, the clocks differ.
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    None
}

async fn status_error(what: &str, resp: Response) -> ForgeError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => v
            .get("message")
            .and_then(|m| m.as_str())
            .map_or_else(|| body.clone(), str::to_string),
        Err(_) => body,
    };
    ForgeError::Status {
        what: what.to_string(),
        status,
        message: crate::text::head_chars(&crate::text::printable(&message), ERROR_BODY_CHARS)
            .to_string(),
    }
}

/// The response, or a 404 as an error saying what is missing (for calls
/// where a missing thing is a failure, not an answer).
pub(crate) fn found(what: &str, resp: Response, missing: &str) -> Result<Response, ForgeError> {
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(ForgeError::Status {
            what: what.to_string(),
            status: 404,
            message: missing.to_string(),
        });
    }
    Ok(resp)
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_limited(
    what: &str,
    mut resp: Response,
    limit: usize,
) -> Result<Vec<u8>, ForgeError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ForgeError::TooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ForgeError::Connect {
        what: what.to_string(),
        source: Box::new(e),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(ForgeError::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a JSON body of at most 1 MiB.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    what: &str,
    resp: Response,
) -> Result<T, ForgeError> {
    let body = read_limited(what, resp, 1 << 20).await?;
    serde_json::from_slice(&body).map_err(|e| ForgeError::Decode {
        what: what.to_string(),
        source: Box::new(e),
    })
}

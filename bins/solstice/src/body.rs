//! Webhook bodies: read against a deadline, with memory taken from a shared
//! budget as bytes arrive (never reserved for a length a client merely
//! declares), and a share of the budget per client address. A stranger
//! without the secret can still send bodies of up to 25 MB; what a body
//! holds is what it has sent, for no longer than the deadline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Webhook body bytes held in memory at once, across requests.
pub const BODY_BUDGET: usize = 128 << 20;
/// Of which one client address may hold (a forge's largest delivery, 25
/// MB, fits with room to spare; four addresses are needed to fill it).
pub const ADDRESS_SHARE: usize = 32 << 20;
/// How long a body may wait for its share of the budget before the
/// request is answered 503 with `Retry-After`.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Past the size limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Not complete by the deadline.
    #[error("the body did not arrive within {0:?}")]
    TooSlow(Duration),
    /// The budget (or this address's share) stayed full.
    #[error("the daemon is receiving too much at once; deliver again later")]
    Busy,
    /// The connection failed.
    #[error("the body cannot be read")]
    Read(#[source] axum::Error),
}

/// The shared budget (counted in KiB).
#[derive(Debug)]
pub struct BodyBudget {
    total: Arc<Semaphore>,
    by_address: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
    share: usize,
}

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget::new(BODY_BUDGET, ADDRESS_SHARE)
    }
}

/// What a read body holds of the budget, until dropped.
#[derive(Debug)]
pub struct BodyHold {
    _permits: Option<OwnedSemaphorePermit>,
    address: Option<IpAddr>,
    bytes: usize,
    by_address: Arc<Mutex<HashMap<Option<IpAddr>, usize>>>,
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.address) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                map.remove(&self.address);
            }
        }
    }
}

impl BodyBudget {
    /// `total` bytes at once, `share` of them per address.
    pub fn new(total: usize, share: usize) -> Self {
        BodyBudget {
            total: Arc::new(Semaphore::new(total >> 10)),
            by_address: Arc::new(Mutex::new(HashMap::new())),
            share,
        }
    }

    /// Reads `body` (at most `limit` bytes, complete within `deadline`)
    /// for a client at `address`, taking budget as bytes arrive.
    pub async fn read(
        &self,
        body: Body,
        address: Option<IpAddr>,
        limit: usize,
        deadline: Duration,
    ) -> Result<(Bytes, BodyHold), BodyError> {
        let until = tokio::time::Instant::now() + deadline;
        let mut hold = BodyHold {
            _permits: None,
            address,
            bytes: 0,
            by_address: self.by_address.clone(),
        };
        let mut out = Vec::new();
        let mut body = body;
        loop {
            let frame = match tokio::time::timeout_at(until, body.frame()).await {
                Err(_) => return Err(BodyError::TooSlow(deadline)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let over = std::error::Error::source(&e)
                        .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                    return Err(if over {
                        BodyError::TooLarge(limit)
                    } else {
                        BodyError::Read(e)
                    });
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let grown = out.len() + data.len();
            if grown > limit {
                return Err(BodyError::TooLarge(limit));
            }
            self.take(&mut hold, out.len(), grown, until).await?;
            out.extend_from_slice(&data);
        }
        Ok((Bytes::from(out), hold))
    }

    /// Grows `hold` from `from` to `to` bytes: this address's share first,
    /// then the budget's permits (waiting at most [`BUDGET_WAIT`]).
    async fn take(
        &self,
        hold: &mut BodyHold,
        from: usize,
        to: usize,
        until: tokio::time::Instant,
    ) -> Result<(), BodyError> {
        {
            let mut map = self
                .by_address
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let used = map.entry(hold.address).or_default();
            if *used + (to - from) > self.share {
                return Err(BodyError::Busy);
            }
            *used += to - from;
            hold.bytes += to - from;
        }
        let kib = |n: usize| n.div_ceil(1024);
        let more = kib(to) - kib(from);
        if more == 0 {
            return Ok(());
        }
        let wait = tokio::time::Instant::now() + BUDGET_WAIT;
        let acquired = tokio::time::timeout_at(
            wait.min(until),
            self.total
                .clone()
                .acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX)),
        )
        .await;
        match acquired {
            Ok(Ok(permit)) => {
                match &mut hold._permits {
                    Some(p) => p.merge(permit),
                    None => hold._permits = Some(permit),
                }
                Ok(())
            }
            _ => Err(BodyError::Busy),
        }
    }

    /// Bytes of the budget free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.total.available_permits() << 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    fn trickle(parts: Vec<&'static [u8]>, gap: Duration) -> Body {
        let stream = futures_util::stream::unfold(parts.into_iter(), move |mut it| async move {
            let next = it.next()?;
            tokio::time::sleep(gap).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(next)), it))
        });
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn memory_is_taken_as_bytes_arrive_and_given_back() {
        let budget = BodyBudget::new(64 << 10, 32 << 10);
        let (bytes, hold) = budget
            .read(
                Body::from(vec![b'x'; 5000]),
                ip(1),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect("read");
        assert_eq!(bytes.len(), 5000);
        assert_eq!(budget.free(), (64 << 10) - 5 * 1024);
        drop(hold);
        assert_eq!(budget.free(), 64 << 10);
        assert!(budget.by_address.lock().expect("map").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_fails_at_its_deadline_holding_only_what_it_sent() {
        let budget = BodyBudget::new(64 << 10, 32 << 10);
        let slow = trickle(vec![b"{", b"\"", b"a"], Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let read = budget.read(slow, ip(1), 25 << 20, Duration::from_secs(12));
        let err = read.await.expect_err("too slow");
        assert!(matches!(err, BodyError::TooSlow(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        assert_eq!(budget.free(), 64 << 10);
    }

    #[tokio::test]
    async fn one_address_cannot_take_more_than_its_share() {
        let budget = BodyBudget::new(64 << 10, 16 << 10);
        let (_, first) = budget
            .read(
                Body::from(vec![b'x'; 12 << 10]),
                ip(1),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect("within share");
        let err = budget
            .read(
                Body::from(vec![b'x'; 8 << 10]),
                ip(1),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect_err("over share");
        assert!(matches!(err, BodyError::Busy));
        // Another address still gets its share.
        budget
            .read(
                Body::from(vec![b'x'; 12 << 10]),
                ip(2),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect("another address");
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_answers_busy_after_a_short_wait() {
        let budget = BodyBudget::new(16 << 10, 16 << 10);
        let (_, _full) = budget
            .read(
                Body::from(vec![b'x'; 16 << 10]),
                ip(1),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect("fills it");
        let started = tokio::time::Instant::now();
        let err = budget
            .read(
                Body::from(vec![b'x'; 10]),
                ip(2),
                1 << 20,
                Duration::from_secs(5),
            )
            .await
            .expect_err("busy");
        assert!(matches!(err, BodyError::Busy));
        assert_eq!(started.elapsed(), BUDGET_WAIT);
    }

    #[tokio::test]
    async fn past_the_limit_is_too_large() {
        let budget = BodyBudget::default();
        let err = budget
            .read(
                Body::from(vec![b'x'; 2000]),
                ip(1),
                1000,
                Duration::from_secs(5),
            )
            .await
            .expect_err("too large");
        assert!(matches!(err, BodyError::TooLarge(1000)));
    }
}

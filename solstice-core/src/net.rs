//! Listeners that strangers can reach: how many connections they may hold,
//! from one address and in all, and for how long a connection may say
//! nothing.
//!
//! Every listener Solstice opens (the daemon's webhooks, API and pages, the
//! engine's runner endpoint) accepts through an [`Admission`]: a
//! connection cap below the process's descriptor limit, a share of it per
//! client address, and fairness when the cap is reached. A connection from
//! an address that holds fewer connections than the heaviest one takes
//! the heaviest one's oldest connection's place, so a flood from a few
//! addresses cannot lock a forge out, and one from many addresses costs
//! the flooders their own connections first. Accepted connections are
//! [`Guarded`]: closed when evicted, when they send nothing within
//! [`ConnectionLimits::first_byte`] of being accepted, or when no byte
//! moves either way for [`ConnectionLimits::idle`].
//!
//! ```
//! use solstice_core::net::{Admission, ConnectionLimits};
//! use std::net::{IpAddr, Ipv4Addr};
//!
//! let admission = Admission::new(ConnectionLimits::new(4, 2));
//! let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
//! let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
//! let first = admission.admit(Some(a)).unwrap();
//! let second = admission.admit(Some(a)).unwrap();
//! assert!(admission.admit(Some(a)).is_none()); // a's share is 2
//! let _b1 = admission.admit(Some(b)).unwrap();
//! let _b2 = admission.admit(Some(b)).unwrap(); // the cap (4) is reached
//! assert!(admission.admit(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))).is_some());
//! assert!(first.evicted()); // a newcomer took a's oldest place
//! assert!(!second.evicted());
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::util::lock;

/// What a listener allows. Construct with [`ConnectionLimits::new`] or
/// [`ConnectionLimits::within_descriptors`], then set the timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Connections held at once, in all.
    pub max_connections: usize,
    /// Connections held at once from one client address. Connections of
    /// a unix socket count as one address with the whole cap.
    pub per_address: usize,
    /// A connection that has sent no byte this long after it was accepted
    /// is closed (`None`: no limit; HTTP/1 servers use the header-read
    /// timeout instead).
    pub first_byte: Option<Duration>,
    /// A connection on which no byte moved, either way, this long is
    /// closed (`None`: no limit).
    pub idle: Option<Duration>,
}

impl ConnectionLimits {
    /// `max_connections` in all, `per_address` from one address (at least
    /// one each), no timeouts.
    pub fn new(max_connections: usize, per_address: usize) -> Self {
        let max_connections = max_connections.max(1);
        ConnectionLimits {
            max_connections,
            per_address: per_address.clamp(1, max_connections),
            first_byte: None,
            idle: None,
        }
    }

    /// A share of the descriptors this process may open (`descriptors`,
    /// from [`raise_descriptor_limit`]): `1/share` of what is left after
    /// 256 for the rest of the process (files, the database, VMs, outgoing
    /// connections), from 16 to `ceiling`; an eighth of that per address
    /// (at least 8).
    pub fn within_descriptors(descriptors: u64, share: u64, ceiling: usize) -> Self {
        let spare = descriptors.saturating_sub(256) / share.max(1);
        let max = usize::try_from(spare)
            .unwrap_or(usize::MAX)
            .clamp(16, ceiling.max(16));
        ConnectionLimits::new(max, (max / 8).max(8))
    }

    /// With a first-byte timeout.
    pub fn with_first_byte(mut self, limit: Duration) -> Self {
        self.first_byte = Some(limit);
        self
    }

    /// With an idle timeout.
    pub fn with_idle(mut self, limit: Duration) -> Self {
        self.idle = Some(limit);
        self
    }

    /// With another share per address.
    pub fn with_per_address(mut self, per_address: usize) -> Self {
        self.per_address = per_address.clamp(1, self.max_connections);
        self
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit
/// (where the system allows) and returns the soft limit now in force.
/// Where it cannot be read, 1024 (the usual default) is assumed.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Who holds which connections of one listener, and who gets in next.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: ConnectionLimits,
    state: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    /// By client address (`None`: a unix socket), oldest first.
    by_address: HashMap<Option<IpAddr>, Vec<Arc<Slot>>>,
    total: usize,
    next: u64,
    refused: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    address: Option<IpAddr>,
    slot: Arc<Slot>,
    state: Arc<Mutex<Held>>,
}

impl Ticket {
    /// Whether a newcomer took this place: the connection must close.
    pub fn evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::SeqCst)
    }

    /// The client's address (`None`: a unix socket).
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    fn wake_on_eviction(&self, cx: &Context<'_>) {
        let mut w = lock(&self.slot.waker);
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = lock(&self.state);
        // An evicted place was freed when it was taken.
        if self.slot.evicted.load(Ordering::SeqCst) {
            return;
        }
        if let Some(list) = held.by_address.get_mut(&self.address)
            && let Some(at) = list.iter().position(|s| s.id == self.slot.id)
        {
            list.remove(at);
            if list.is_empty() {
                held.by_address.remove(&self.address);
            }
            held.total -= 1;
        }
    }
}

/// Counts of what an [`Admission`] did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdmissionStats {
    /// Connections held now.
    pub held: usize,
    /// Connections refused so far (the address's share was used up, or
    /// the cap was reached by addresses holding no more than it).
    pub refused: u64,
    /// Connections closed so far to make room for another address.
    pub evicted: u64,
}

impl Admission {
    /// An admission with these limits.
    pub fn new(limits: ConnectionLimits) -> Self {
        Admission {
            limits,
            state: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// What it did so far.
    pub fn stats(&self) -> AdmissionStats {
        let held = lock(&self.state);
        AdmissionStats {
            held: held.total,
            refused: held.refused,
            evicted: held.evicted,
        }
    }

    /// A place for a connection from `address` (`None`: a unix socket), or
    /// `None` when it must be closed at once. At the cap, the oldest
    /// connection of the address holding the most (of those, the one with
    /// the oldest connection) is evicted, if that address holds at least two
    /// more than `address` does.
    pub fn admit(&self, address: Option<IpAddr>) -> Option<Ticket> {
        let mut held = lock(&self.state);
        let share = if address.is_some() {
            self.limits.per_address
        } else {
            self.limits.max_connections
        };
        let mine = held.by_address.get(&address).map_or(0, Vec::len);
        if mine >= share {
            held.refused += 1;
            return None;
        }
        if held.total >= self.limits.max_connections {
            // The heaviest address; among equally heavy ones, the one with
            // the oldest connection (deterministic, and the oldest is the
            // likeliest to be idle).
            let heaviest = held
                .by_address
                .iter()
                .max_by_key(|(_, list)| {
                    (
                        list.len(),
                        std::cmp::Reverse(list.first().map_or(u64::MAX, |s| s.id)),
                    )
                })
                .map(|(a, list)| (*a, list.len()));
            match heaviest {
                Some((victim, count)) if count >= mine + 2 => {
                    let list = held.by_address.get_mut(&victim)?;
                    let slot = list.remove(0);
                    if list.is_empty() {
                        held.by_address.remove(&victim);
                    }
                    held.total -= 1;
                    held.evicted += 1;
                    slot.evict();
                }
                _ => {
                    held.refused += 1;
                    return None;
                }
            }
        }
        held.next += 1;
        let slot = Arc::new(Slot {
            id: held.next,
            evicted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        held.by_address
            .entry(address)
            .or_default()
            .push(slot.clone());
        held.total += 1;
        Some(Ticket {
            address,
            slot,
            state: self.state.clone(),
        })
    }
}

/// A connection held under an [`Admission`]: reads and writes fail once it
/// is evicted, when its first byte does not come in time, or when it idles
/// past the limit; the place is freed when it is dropped.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    ticket: Ticket,
    first_byte: Option<Duration>,
    idle: Option<Duration>,
    started: Instant,
    last: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    /// `inner`, holding `ticket`, with `limits`' timeouts.
    pub fn new(inner: S, ticket: Ticket, limits: &ConnectionLimits) -> Self {
        Guarded {
            inner,
            ticket,
            first_byte: limits.first_byte,
            idle: limits.idle,
            started: Instant::now(),
            last: None,
            timer: None,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Its place.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The moment the connection is closed for saying nothing, if any.
    fn deadline(&self) -> Option<Instant> {
        let first = match self.last {
            None => self.first_byte.map(|d| self.started + d),
            Some(_) => None,
        };
        let idle = self.idle.map(|d| self.last.unwrap_or(self.started) + d);
        match (first, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// On `Pending`: an error when the connection must close now; else
    /// the timer is armed (and the eviction waker registered).
    fn check(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.ticket.evicted() {
            return Some(evicted());
        }
        self.ticket.wake_on_eviction(cx);
        let deadline = self.deadline()?;
        if Instant::now() >= deadline {
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection said nothing for too long",
            ));
        }
        match &mut self.timer {
            Some(t) if t.deadline() == deadline => {}
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        if let Some(t) = &mut self.timer
            && t.as_mut().poll(cx).is_ready()
        {
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection said nothing for too long",
            ));
        }
        None
    }
}

fn evicted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed to make room for another client's connection",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.ticket.evicted() {
            return Poll::Ready(Err(evicted()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.ticket.evicted() {
            return Poll::Ready(Err(evicted()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                // Writing is not a client's byte: it does not end the
                // first-byte wait, but it is activity for the idle limit.
                if n > 0 && this.last.is_some() {
                    this.last = Some(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.ticket.evicted() {
            return Poll::Ready(Err(evicted()));
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 && this.last.is_some() {
                    this.last = Some(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TCP listener's accepted connections under an [`Admission`], as a
/// stream (what `tonic`'s `serve_with_incoming` takes) or one at a time
/// ([`GuardedListener::accept`]). A connection that may not be held is
/// closed as soon as it is accepted; an accept error (out of descriptors)
/// pauses accepting for 50 ms instead of spinning.
#[derive(Debug)]
pub struct GuardedListener<L> {
    listener: L,
    admission: Admission,
    pause: Option<Pin<Box<Sleep>>>,
}

/// What [`GuardedListener`] accepts from.
pub trait Accept: Send + 'static {
    /// The connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its client's address.
    fn poll_accept_from(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Stream, Option<std::net::SocketAddr>)>>;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    fn poll_accept_from(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Stream, Option<std::net::SocketAddr>)>> {
        self.poll_accept(cx).map_ok(|(s, a)| {
            // No Nagle: an answer goes out at once.
            let _ = s.set_nodelay(true);
            (s, Some(a))
        })
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    fn poll_accept_from(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Stream, Option<std::net::SocketAddr>)>> {
        self.poll_accept(cx).map_ok(|(s, _)| (s, None))
    }
}

impl<L: Accept> GuardedListener<L> {
    /// `listener`'s connections under `admission`.
    pub fn new(listener: L, admission: Admission) -> Self {
        GuardedListener {
            listener,
            admission,
            pause: None,
        }
    }

    /// The admission.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Polls for the next connection that may be held.
    pub fn poll_next_guarded(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(Guarded<L::Stream>, Option<std::net::SocketAddr>)> {
        loop {
            if let Some(p) = &mut self.pause {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            match self.listener.poll_accept_from(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "cannot accept a connection; pausing 50 ms");
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
                Poll::Ready(Ok((stream, peer))) => {
                    if let Some(ticket) = self.admission.admit(peer.map(|p| p.ip())) {
                        let limits = self.admission.limits;
                        return Poll::Ready((Guarded::new(stream, ticket, &limits), peer));
                    }
                    // Refused: closed here, by dropping it.
                    tracing::debug!(peer = ?peer, "connection refused: over the client's share or the cap");
                }
            }
        }
    }

    /// The next connection that may be held, and its client's address.
    pub async fn accept(&mut self) -> (Guarded<L::Stream>, Option<std::net::SocketAddr>) {
        std::future::poll_fn(|cx| self.poll_next_guarded(cx)).await
    }
}

impl<L: Accept + Unpin> tokio_stream::Stream for GuardedListener<L> {
    type Item = std::io::Result<Guarded<L::Stream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_next_guarded(cx).map(|(s, _)| Some(Ok(s)))
    }
}

impl<S: Send + Sync + 'static> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = Option<IpAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.ticket.address
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let a = Admission::new(ConnectionLimits::new(100, 3));
        let held: Vec<_> = (0..3)
            .map(|_| a.admit(ip(1)).expect("within share"))
            .collect();
        assert!(a.admit(ip(1)).is_none());
        drop(held);
        assert_eq!(a.stats().held, 0);
        assert!(a.admit(ip(1)).is_some());
    }

    #[test]
    fn at_the_cap_a_newcomer_evicts_the_heaviest_oldest() {
        let a = Admission::new(ConnectionLimits::new(6, 4));
        let flood: Vec<_> = (0..4).map(|_| a.admit(ip(1)).expect("flood")).collect();
        let other: Vec<_> = (0..2).map(|_| a.admit(ip(2)).expect("other")).collect();
        assert_eq!(a.stats().held, 6);
        let newcomer = a.admit(ip(3)).expect("a newcomer gets in");
        assert!(flood[0].evicted(), "the heaviest's oldest goes");
        assert!(flood[1..].iter().all(|t| !t.evicted()));
        assert!(other.iter().all(|t| !t.evicted()));
        assert_eq!(a.stats().held, 6);
        // Dropping an evicted ticket frees nothing twice.
        drop(flood);
        assert_eq!(a.stats().held, 3);
        drop(newcomer);
        drop(other);
        assert_eq!(a.stats().held, 0);
    }

    #[test]
    fn at_the_cap_with_even_shares_the_newcomer_is_refused() {
        let a = Admission::new(ConnectionLimits::new(4, 4));
        let _x: Vec<_> = (0..2).map(|_| a.admit(ip(1)).expect("x")).collect();
        let _y: Vec<_> = (0..2).map(|_| a.admit(ip(2)).expect("y")).collect();
        // ip(1) holds 2, the newcomer 0: it may take one place.
        let _z = a.admit(ip(3)).expect("z");
        // ip(3) holds 1, the heaviest 2: no longer two more.
        assert!(a.admit(ip(3)).is_none());
        assert_eq!(a.stats().refused, 1);
        assert_eq!(a.stats().evicted, 1);
    }

    #[test]
    fn limits_follow_the_descriptors() {
        let l = ConnectionLimits::within_descriptors(1024, 2, 8192);
        assert_eq!((l.max_connections, l.per_address), (384, 48));
        let l = ConnectionLimits::within_descriptors(100, 2, 8192);
        assert_eq!((l.max_connections, l.per_address), (16, 8));
        let l = ConnectionLimits::within_descriptors(1 << 20, 2, 4096);
        assert_eq!(l.max_connections, 4096);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_its_first_byte_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let a = Admission::new(
            ConnectionLimits::new(4, 4)
                .with_first_byte(Duration::from_secs(5))
                .with_idle(Duration::from_secs(60)),
        );
        let (client, server) = tokio::io::duplex(64);
        let ticket = a.admit(ip(1)).expect("admit");
        let mut guarded = Guarded::new(server, ticket, &a.limits());
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let err = guarded.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // After a first byte, the idle limit counts instead.
        let (mut client2, server2) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server2, a.admit(ip(1)).expect("admit"), &a.limits());
        client2.write_all(b"x").await.expect("write");
        assert_eq!(guarded.read(&mut buf).await.expect("a byte"), 1);
        let started = Instant::now();
        let err = guarded.read(&mut buf).await.expect_err("idles out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        drop(client);
    }

    #[tokio::test]
    async fn an_evicted_connection_wakes_and_fails() {
        use tokio::io::AsyncReadExt;
        let a = Admission::new(ConnectionLimits::new(2, 2));
        let (_client, server) = tokio::io::duplex(64);
        let mut guarded = Guarded::new(server, a.admit(ip(1)).expect("admit"), &a.limits());
        let _second = a.admit(ip(1)).expect("admit");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            guarded.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _newcomer = a.admit(ip(2)).expect("evicts");
        let result = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(
            result.expect_err("evicted").kind(),
            std::io::ErrorKind::ConnectionAborted
        );
    }
}

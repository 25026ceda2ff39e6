//! [`EngineEvent`]: what the engine tells subscribers, and the bus that
//! carries them. The engine's events for subscribers (printers, APIs, tests), bounded in
//! bytes: a subscriber that stops reading cannot pin more than
//! [`EVENT_BUFFER_BYTES`] of log data. It misses what was dropped and is
//! told how much ([`EventError::Lagged`]), then reads on from the oldest
//! event still kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::store::{JobStatus, LogStream, RunId, RunStatus, StepStatus};
use crate::util::lock;

/// What happens, for live output (`cidev run`) and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineEvent {
    /// A job is queued: said once the store holds it as queued and before
    /// its message is published, so that it comes before the job's
    /// `JobStarted` on any engine.
    JobQueued {
        /// Run.
        run: RunId,
        /// Expanded job id.
        key: String,
    },
    /// An attempt started.
    JobStarted {
        /// Run.
        run: RunId,
        /// Expanded job id.
        key: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A step started.
    StepStarted {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Step index.
        index: u32,
        /// Step name.
        name: String,
    },
    /// Output (masked).
    Log {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// The step that wrote it; `None` for the system's own lines.
        step: Option<u32>,
        /// Which stream.
        stream: LogStream,
        /// Bytes.
        data: Vec<u8>,
    },
    /// A step ended.
    StepFinished {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Step index.
        index: u32,
        /// Status.
        status: StepStatus,
        /// Exit status.
        exit_code: i32,
    },
    /// An attempt was lost and the job goes round again.
    JobRetrying {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// The attempt that was lost.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A job reached its final status.
    JobFinished {
        /// Run.
        run: RunId,
        /// Job.
        key: String,
        /// Final status.
        status: JobStatus,
        /// Why, when not succeeded.
        reason: Option<String>,
    },
    /// Every job of the run is final.
    RunFinished {
        /// Run.
        run: RunId,
        /// Final status.
        status: RunStatus,
    },
}

/// Default of [`crate::engine::EngineConfig::event_buffer_bytes`]: most
/// bytes of events kept for subscribers that are behind, 16 MiB (log data
/// counted by its length, every event also by [`EVENT_OVERHEAD`], so the
/// bound also bounds how many events are kept).
pub const EVENT_BUFFER_BYTES: usize = 16 << 20;

/// What an event costs in the buffer beyond its log data.
pub const EVENT_OVERHEAD: usize = 128;

/// Why [`Events::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The subscriber fell behind by more than the buffer holds: this many
    /// events were dropped before it read them. The next `recv` returns the
    /// oldest event still kept.
    #[error("fell behind: {missed} events were dropped")]
    Lagged {
        /// Events it will never see.
        missed: u64,
    },
    /// The engine is gone and every kept event was read.
    #[error("the engine is gone")]
    Closed,
}

fn cost(event: &EngineEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            EngineEvent::Log { data, .. } => data.len(),
            _ => 0,
        }
}

#[derive(Debug, Default)]
struct Ring {
    /// Sequence number of `events[0]`.
    first: u64,
    events: VecDeque<(Arc<EngineEvent>, usize)>,
    bytes: usize,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    ring: Mutex<Ring>,
    added: Notify,
    /// Live subscriptions: with none, an event is dropped at once (a new
    /// subscriber sees only what is sent after it subscribed).
    subscribers: AtomicUsize,
}

/// The sending side, owned by the engine.
#[derive(Debug)]
pub(crate) struct EventBus {
    shared: Arc<Shared>,
    limit: usize,
}

impl EventBus {
    /// A bus keeping at most `limit` bytes of events (and always the
    /// newest event, however large).
    pub(crate) fn new(limit: usize) -> EventBus {
        EventBus {
            shared: Arc::default(),
            limit,
        }
    }

    /// Keeps `event` for subscribers, dropping the oldest past the bounds.
    pub(crate) fn send(&self, event: EngineEvent) {
        if self.shared.subscribers.load(Ordering::Acquire) == 0 {
            return;
        }
        let size = cost(&event);
        {
            let mut ring = lock(&self.shared.ring);
            ring.events.push_back((Arc::new(event), size));
            ring.bytes += size;
            while ring.events.len() > 1 && ring.bytes > self.limit {
                if let Some((_, old)) = ring.events.pop_front() {
                    ring.bytes -= old;
                    ring.first += 1;
                }
            }
        }
        self.shared.added.notify_waiters();
    }

    /// A subscription that sees events sent from now on.
    pub(crate) fn subscribe(&self) -> Events {
        let ring = lock(&self.shared.ring);
        // Counted under the lock: an event sent after this point is kept.
        self.shared.subscribers.fetch_add(1, Ordering::AcqRel);
        Events {
            shared: self.shared.clone(),
            next: ring.first + ring.events.len() as u64,
        }
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        lock(&self.shared.ring).closed = true;
        self.shared.added.notify_waiters();
    }
}

/// One subscriber's view of the engine's events ([`crate::engine::Engine::subscribe`]).
#[derive(Debug)]
pub struct Events {
    shared: Arc<Shared>,
    next: u64,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.shared.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Events {
    /// The next event, waiting for one; see [`EventError`] for what a slow
    /// subscriber gets.
    pub async fn recv(&mut self) -> Result<EngineEvent, EventError> {
        let shared = self.shared.clone();
        loop {
            let added = shared.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(result) = self.try_recv() {
                return result;
            }
            added.await;
        }
    }

    /// The next event if one is there: `None` when there is none yet.
    pub fn try_recv(&mut self) -> Option<Result<EngineEvent, EventError>> {
        let ring = lock(&self.shared.ring);
        if self.next < ring.first {
            let missed = ring.first - self.next;
            self.next = ring.first;
            return Some(Err(EventError::Lagged { missed }));
        }
        let at = usize::try_from(self.next - ring.first).unwrap_or(usize::MAX);
        match ring.events.get(at) {
            Some((event, _)) => {
                self.next += 1;
                Some(Ok(EngineEvent::clone(event)))
            }
            None if ring.closed => Some(Err(EventError::Closed)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LogStream, RunId};

    fn log(bytes: usize) -> EngineEvent {
        EngineEvent::Log {
            run: RunId::new(1),
            key: "k".into(),
            step: Some(0),
            stream: LogStream::Stdout,
            data: vec![b'x'; bytes],
        }
    }

    #[test]
    fn a_stalled_subscriber_pins_at_most_the_byte_bound_and_learns_what_it_missed() {
        let bus = EventBus::new(EVENT_BUFFER_BYTES);
        let mut slow = bus.subscribe();
        let chunk = 64 << 10;
        let sent = 4 * EVENT_BUFFER_BYTES / chunk;
        for _ in 0..sent {
            bus.send(log(chunk));
        }
        let kept = {
            let ring = lock(&bus.shared.ring);
            assert!(
                ring.bytes <= EVENT_BUFFER_BYTES,
                "{} bytes kept",
                ring.bytes
            );
            ring.events.len()
        };
        assert!(kept < sent / 3, "{kept} of {sent} kept");
        match slow.try_recv() {
            Some(Err(EventError::Lagged { missed })) => {
                assert_eq!(missed as usize, sent - kept);
            }
            other => panic!("expected a lag, got {other:?}"),
        }
        let mut read = 0;
        while let Some(Ok(_)) = slow.try_recv() {
            read += 1;
        }
        assert_eq!(
            read, kept,
            "after the lag, everything kept is read in order"
        );
    }

    #[test]
    fn small_events_are_bounded_too() {
        let bus = EventBus::new(100 * EVENT_OVERHEAD);
        let mut slow = bus.subscribe();
        for _ in 0..110 {
            bus.send(log(0));
        }
        assert_eq!(
            slow.try_recv().and_then(Result::err),
            Some(EventError::Lagged { missed: 10 })
        );
    }

    #[test]
    fn an_event_larger_than_the_bound_is_still_delivered() {
        let bus = EventBus::new(EVENT_BUFFER_BYTES);
        let mut sub = bus.subscribe();
        bus.send(log(EVENT_BUFFER_BYTES + 1));
        assert!(matches!(sub.try_recv(), Some(Ok(EngineEvent::Log { .. }))));
    }

    #[test]
    fn without_subscribers_nothing_is_kept() {
        let bus = EventBus::new(EVENT_BUFFER_BYTES);
        bus.send(log(1 << 10));
        assert!(lock(&bus.shared.ring).events.is_empty());
        let mut sub = bus.subscribe();
        bus.send(log(1));
        drop(bus.subscribe());
        assert!(matches!(sub.try_recv(), Some(Ok(_))));
        drop(sub);
        bus.send(log(1));
        assert_eq!(lock(&bus.shared.ring).events.len(), 1, "only the one seen");
    }

    #[tokio::test]
    async fn recv_waits_for_an_event_and_ends_when_the_engine_is_gone() {
        let bus = EventBus::new(EVENT_BUFFER_BYTES);
        let mut sub = bus.subscribe();
        let waiter = tokio::spawn(async move {
            let first = sub.recv().await;
            let second = sub.recv().await;
            (first.is_ok(), second)
        });
        tokio::task::yield_now().await;
        bus.send(log(1));
        drop(bus);
        let (first, second) = waiter.await.expect("task");
        assert!(first);
        assert_eq!(second.err(), Some(EventError::Closed));
    }
}

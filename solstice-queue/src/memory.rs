//! The in-process queue of the embedded deployment. Messages are kept as
//! the JSON bodies a broker would carry, so decoding and dead-lettering
//! behave exactly as they will with RabbitMQ.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::{Consumer, DeadLetter, Delivery, JobQueue, QueueError, QueueOptions, Settle};

/// An in-memory [`JobQueue`]. Cloning gives another handle to the same
/// queue. Durable for the life of the process only.
pub struct MemoryQueue<M> {
    shared: Arc<Shared>,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for MemoryQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue").finish_non_exhaustive()
    }
}

impl<M> Clone for MemoryQueue<M> {
    fn clone(&self) -> Self {
        MemoryQueue {
            shared: self.shared.clone(),
            _message: PhantomData,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    options: QueueOptions,
}

struct Entry {
    body: Vec<u8>,
    deliveries: u32,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    /// Delivered and not settled: tag -> (consumer, entry).
    unacked: HashMap<u64, (u64, Entry)>,
    inflight: HashMap<u64, usize>,
    dead: Vec<DeadLetter>,
    next_tag: u64,
    next_consumer: u64,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind
        // (every mutation is a single step), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles a delivery. `None` acks, `Some(true)` requeues, `Some(false)`
    /// dead-letters.
    fn settle(&self, tag: u64, requeue: Option<bool>) -> Result<(), QueueError> {
        let mut state = self.lock();
        let Some((consumer, entry)) = state.unacked.remove(&tag) else {
            // Its consumer went away and the message was already returned.
            return Err(QueueError::Closed);
        };
        if let Some(n) = state.inflight.get_mut(&consumer) {
            *n = n.saturating_sub(1);
        }
        match requeue {
            None => {}
            Some(true) => state.ready.push_front(entry),
            Some(false) => state.dead.push(DeadLetter {
                body: entry.body,
                reason: "rejected by the consumer".into(),
            }),
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl<M> MemoryQueue<M> {
    /// An empty queue.
    pub fn new(options: QueueOptions) -> Self {
        MemoryQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                options,
            }),
            _message: PhantomData,
        }
    }

    /// Closes the queue: waiting consumers get [`QueueError::Closed`].
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
    }

    /// Messages waiting to be delivered (not counting unacked ones).
    pub fn ready_len(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Delivered but not yet settled.
    pub fn unacked_len(&self) -> usize {
        self.shared.lock().unacked.len()
    }

    fn push(&self, body: Vec<u8>) -> Result<(), QueueError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        state.ready.push_back(Entry {
            body,
            deliveries: 0,
        });
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl<M> JobQueue<M> for MemoryQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn publish(&self, message: &M) -> Result<(), QueueError> {
        let body = serde_json::to_vec(message).map_err(|e| QueueError::Encode(Box::new(e)))?;
        self.push(body)
    }

    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.push(body)
    }

    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<M>>, QueueError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(QueueError::Closed);
        }
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.inflight.insert(id, 0);
        Ok(Box::new(MemoryConsumer {
            shared: self.shared.clone(),
            id,
            prefetch: prefetch.max(1),
            _message: PhantomData,
        }))
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self.shared.lock().dead.clone())
    }
}

struct MemoryConsumer<M> {
    shared: Arc<Shared>,
    id: u64,
    prefetch: usize,
    _message: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> MemoryConsumer<M> {
    /// Takes the next deliverable message, dead-lettering the ones that
    /// cannot be delivered. `Ok(None)`: nothing to hand out right now.
    fn try_take(&self) -> Result<Option<(u64, M, u32)>, QueueError> {
        let mut state = self.shared.lock();
        loop {
            if state.closed {
                return Err(QueueError::Closed);
            }
            if state.inflight.get(&self.id).copied().unwrap_or(0) >= self.prefetch {
                return Ok(None);
            }
            let Some(mut entry) = state.ready.pop_front() else {
                return Ok(None);
            };
            entry.deliveries += 1;
            if entry.deliveries > self.shared.options.max_deliveries {
                let reason = format!(
                    "delivered {} times without being acknowledged",
                    entry.deliveries - 1
                );
                state.dead.push(DeadLetter {
                    body: entry.body,
                    reason,
                });
                continue;
            }
            let message = match serde_json::from_slice::<M>(&entry.body) {
                Ok(m) => m,
                Err(e) => {
                    let reason = format!("cannot decode: {e}");
                    state.dead.push(DeadLetter {
                        body: entry.body,
                        reason,
                    });
                    continue;
                }
            };
            let tag = state.next_tag;
            state.next_tag += 1;
            let deliveries = entry.deliveries;
            state.unacked.insert(tag, (self.id, entry));
            *state.inflight.entry(self.id).or_insert(0) += 1;
            return Ok(Some((tag, message, deliveries)));
        }
    }
}

#[async_trait]
impl<M> Consumer<M> for MemoryConsumer<M>
where
    M: DeserializeOwned + Send + 'static,
{
    async fn next(&mut self) -> Result<Delivery<M>, QueueError> {
        loop {
            // Register for wake-ups before looking, so none is missed.
            let shared = self.shared.clone();
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(d) = self.try_next().await? {
                return Ok(d);
            }
            changed.await;
        }
    }

    async fn try_next(&mut self) -> Result<Option<Delivery<M>>, QueueError> {
        Ok(self.try_take()?.map(|(tag, message, deliveries)| {
            let settle = MemorySettle {
                shared: self.shared.clone(),
                tag,
                settled: false,
            };
            Delivery::new(message, deliveries, Box::new(settle))
        }))
    }
}

impl<M> Drop for MemoryConsumer<M> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let mine: Vec<u64> = state
            .unacked
            .iter()
            .filter(|(_, (c, _))| *c == self.id)
            .map(|(t, _)| *t)
            .collect();
        let mut returned: Vec<(u64, Entry)> = mine
            .into_iter()
            .filter_map(|t| state.unacked.remove(&t).map(|(_, e)| (t, e)))
            .collect();
        // Oldest deliveries go back first, ahead of everything else.
        returned.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        for (_, entry) in returned {
            state.ready.push_front(entry);
        }
        state.inflight.remove(&self.id);
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

struct MemorySettle {
    shared: Arc<Shared>,
    tag: u64,
    settled: bool,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.settled = true;
        self.shared.settle(self.tag, None)
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        self.settled = true;
        self.shared.settle(self.tag, Some(requeue))
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if !self.settled {
            // Dropped unsettled: give it back. Already returned if the
            // consumer went first, which is fine.
            let _ = self.shared.settle(self.tag, Some(true));
        }
    }
}

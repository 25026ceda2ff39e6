//! [`SharedQueue`]: a [`JobQueue`] in one process.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use solstice_queue::{Consumer, DeadLetter, Delivery, JobQueue, QueueError, QueueOptions, Settle};
use tokio::sync::Notify;

struct Message {
    id: u64,
    body: Vec<u8>,
    deliveries: u32,
}

#[derive(Default)]
struct State {
    next_id: u64,
    next_consumer: u64,
    ready: VecDeque<Message>,
    /// Handed out and not settled: (consumer, message).
    out: Vec<(u64, Message)>,
    dead: Vec<DeadLetter>,
}

struct Shared {
    options: QueueOptions,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change below is made in one step under the lock: a panic
        // elsewhere cannot leave it half made.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends a delivery: gone (`None`), back to the queue, or dead.
    fn settle(&self, id: u64, requeue: Option<bool>) {
        let mut state = self.state();
        let Some(at) = state.out.iter().position(|(_, m)| m.id == id) else {
            return; // settled already, or returned when its consumer went away
        };
        let (_, message) = state.out.remove(at);
        match requeue {
            None => {}
            Some(true) if message.deliveries < self.options.max_deliveries => {
                state.ready.push_front(message);
            }
            Some(requeue) => {
                let reason = if requeue {
                    format!("delivered {} times", message.deliveries)
                } else {
                    "rejected by its consumer".into()
                };
                state.dead.push(DeadLetter::new(message.body, reason));
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// The queue. Clones share it.
pub struct SharedQueue<M> {
    shared: Arc<Shared>,
    message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for SharedQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state();
        f.debug_struct("SharedQueue")
            .field("ready", &state.ready.len())
            .field("unacked", &state.out.len())
            .field("dead", &state.dead.len())
            .finish()
    }
}

impl<M> Clone for SharedQueue<M> {
    fn clone(&self) -> Self {
        SharedQueue {
            shared: self.shared.clone(),
            message: PhantomData,
        }
    }
}

impl<M> SharedQueue<M> {
    /// An empty queue.
    pub fn new(options: QueueOptions) -> Self {
        SharedQueue {
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
            message: PhantomData,
        }
    }
}

#[async_trait]
impl<M> JobQueue<M> for SharedQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn publish(&self, message: &M) -> Result<(), QueueError> {
        let body = serde_json::to_vec(message).map_err(|e| QueueError::Encode(Box::new(e)))?;
        self.publish_bytes(body).await
    }

    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError> {
        let mut state = self.shared.state();
        state.next_id += 1;
        let id = state.next_id;
        state.ready.push_back(Message {
            id,
            body,
            deliveries: 0,
        });
        drop(state);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<M>>, QueueError> {
        let mut state = self.shared.state();
        state.next_consumer += 1;
        Ok(Box::new(SharedConsumer::<M> {
            shared: self.shared.clone(),
            id: state.next_consumer,
            prefetch: prefetch.max(1),
            message: PhantomData,
        }))
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self.shared.state().dead.clone())
    }
}

struct SharedConsumer<M> {
    shared: Arc<Shared>,
    id: u64,
    prefetch: usize,
    message: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> SharedConsumer<M> {
    /// The next message this consumer may take, if any.
    fn take(&self) -> Option<Delivery<M>> {
        let mut state = self.shared.state();
        let held = state.out.iter().filter(|(c, _)| *c == self.id).count();
        if held >= self.prefetch {
            return None;
        }
        // Undecodable messages are dead-lettered on the way.
        loop {
            let mut message = state.ready.pop_front()?;
            match serde_json::from_slice::<M>(&message.body) {
                Ok(decoded) => {
                    message.deliveries += 1;
                    let (id, deliveries) = (message.id, message.deliveries);
                    state.out.push((self.id, message));
                    let settle = SharedSettle {
                        shared: self.shared.clone(),
                        id,
                        settled: false,
                    };
                    return Some(Delivery::new(decoded, deliveries, Box::new(settle)));
                }
                Err(e) => state.dead.push(DeadLetter::new(
                    message.body,
                    format!("cannot decode the message: {e}"),
                )),
            }
        }
    }
}

#[async_trait]
impl<M> Consumer<M> for SharedConsumer<M>
where
    M: DeserializeOwned + Send + 'static,
{
    async fn next(&mut self) -> Result<Delivery<M>, QueueError> {
        loop {
            // Listen before looking, so a change in between is not missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(delivery) = self.take() {
                return Ok(delivery);
            }
            changed.await;
        }
    }

    /// What is there now, without waiting (a consumer of several queues
    /// asks a retry lane this way before it takes new work).
    async fn try_next(&mut self) -> Result<Option<Delivery<M>>, QueueError> {
        Ok(self.take())
    }
}

impl<M> Drop for SharedConsumer<M> {
    fn drop(&mut self) {
        // What this consumer held goes back, at the front, in order.
        let mut state = self.shared.state();
        let (mine, others): (Vec<_>, Vec<_>) =
            state.out.drain(..).partition(|(c, _)| *c == self.id);
        state.out = others;
        for (_, message) in mine.into_iter().rev() {
            state.ready.push_front(message);
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }
}

struct SharedSettle {
    shared: Arc<Shared>,
    id: u64,
    settled: bool,
}

#[async_trait]
impl Settle for SharedSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.settled = true;
        self.shared.settle(self.id, None);
        Ok(())
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        self.settled = true;
        self.shared.settle(self.id, Some(requeue));
        Ok(())
    }
}

impl Drop for SharedSettle {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle(self.id, Some(true));
        }
    }
}

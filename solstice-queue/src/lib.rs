//! # solstice-queue
//!
//! The durable job queue between the integration layer (which publishes one
//! message per workflow job) and the orchestrators (which consume them up
//! to their capacity). One trait, [`JobQueue`], generic over a serde
//! message; [`MemoryQueue`] for the embedded, single-process deployment;
//! `RabbitQueue` (the `rabbitmq` feature) for many hosts; [`LabelQueues`]
//! for routing by `runs_on` label (a host consumes only the queues of the
//! labels it serves); and a conformance suite (the `testing` module, behind
//! the `testing` feature) that every implementation, including third
//! parties', runs.
//!
//! ## Contract
//!
//! - **At-least-once.** A message is removed only when a consumer acks it.
//!   Unacked messages come back when their delivery is dropped, when
//!   [`Delivery::nack`] asks for it, or when the consumer goes away.
//! - **Redelivery is counted.** [`Delivery::deliveries`] is 1 the first time;
//!   after [`QueueOptions::max_deliveries`] the message is dead-lettered
//!   instead of being handed out again, so a message that crashes its
//!   consumer cannot crash-loop the fleet.
//! - **Undecodable messages never reach a consumer**: they are dead-lettered
//!   with the decode error as the reason.
//! - **Prefetch** bounds how many unacked deliveries one consumer holds.
//! - **Asked, not pushed.** A consumer's owner says how much room it has
//!   ([`Consumer::set_room`]) and when it is full ([`Consumer::pause`]);
//!   a broker-backed consumer then takes no message its host cannot start.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use solstice_queue::{JobQueue, MemoryQueue};
//!
//! let queue: MemoryQueue<String> = MemoryQueue::new(Default::default());
//! queue.publish(&"build".to_string()).await.unwrap();
//! let mut consumer = queue.consume(4).await.unwrap();
//! let delivery = consumer.next().await.unwrap();
//! assert_eq!(delivery.message(), "build");
//! delivery.ack().await.unwrap();
//! # });
//! ```

mod labels;
mod memory;
#[cfg(feature = "rabbitmq")]
mod rabbit;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use labels::{LabelQueues, OneQueue, PerLabel};
pub use memory::MemoryQueue;
#[cfg(feature = "rabbitmq")]
pub use rabbit::RabbitQueue;

/// `e` and its sources, one after another (for logs).
#[cfg(feature = "rabbitmq")]
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The message could not be serialised.
    #[error("cannot encode the message")]
    Encode(#[source] BoxError),
    /// The queue (or the connection to the broker) is closed.
    #[error("the queue is closed")]
    Closed,
    /// The broker reported an error; retrying may help.
    #[error("the broker failed")]
    Broker(#[source] BoxError),
}

/// An error kept whole (with its own sources), without naming the
/// encoder's or the broker client's type in the API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Settings shared by all implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// After this many deliveries a message that is requeued again is
    /// dead-lettered instead. Default 5.
    pub max_deliveries: u32,
    /// Consumers take a message only while their owner waits in
    /// [`Consumer::next`], one at a time, and hold none ahead: a broker
    /// pushes nothing to them. For a lane whose messages must not wait at
    /// a host that stopped asking (paused, hung, cut off): they stay in
    /// the queue for the next host that asks. A broker-backed queue then
    /// polls while its consumer waits. Default `false` (subscribed, with
    /// the owner's room as its prefetch); a queue whose consumers never
    /// hold anything unasked (the memory queue) is the same either way.
    pub pull: bool,
}

impl QueueOptions {
    /// These options with another [`QueueOptions::max_deliveries`].
    pub fn with_max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    /// These options with [`QueueOptions::pull`] set.
    pub fn with_pull(mut self, pull: bool) -> Self {
        self.pull = pull;
        self
    }
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_deliveries: 5,
            pull: false,
        }
    }
}

/// A message that will not be delivered again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The raw body as published.
    pub body: Vec<u8>,
    /// Why it was dead-lettered.
    pub reason: String,
}

impl DeadLetter {
    /// `body`, dead-lettered for `reason`.
    pub fn new(body: Vec<u8>, reason: impl Into<String>) -> DeadLetter {
        DeadLetter {
            body,
            reason: reason.into(),
        }
    }
}

/// A durable, at-least-once queue of `M`.
#[async_trait]
pub trait JobQueue<M>: Send + Sync
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Appends a message. When this returns `Ok`, the message survives the
    /// publisher going away. Not idempotent: publishing twice queues twice.
    async fn publish(&self, message: &M) -> Result<(), QueueError>;

    /// Appends several messages, in order; when this returns `Ok`, every
    /// one survives the publisher going away. On an error, some may have
    /// been appended (publishing again may queue those twice). The
    /// default publishes one after another; a broker can pipeline them.
    async fn publish_many(&self, messages: &[M]) -> Result<(), QueueError> {
        for m in messages {
            self.publish(m).await?;
        }
        Ok(())
    }

    /// Appends a raw body without checking it decodes. For tools and tests
    /// (the conformance suite uses it to check dead-lettering).
    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError>;

    /// Opens a consumer holding at most `prefetch` (at least 1) unacked
    /// deliveries. Several consumers share the messages; each message goes
    /// to one of them at a time.
    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<M>>, QueueError>;

    /// Messages that were dead-lettered (oldest first), for operators.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError>;
}

/// One consumer. Dropping it returns its unacked deliveries to the queue.
#[async_trait]
pub trait Consumer<M>: Send
where
    M: Send + 'static,
{
    /// Waits for the next message. Waits while `prefetch` deliveries are
    /// unacked. Returns `Err(QueueError::Closed)` once the queue is closed.
    async fn next(&mut self) -> Result<Delivery<M>, QueueError>;

    /// The owner will not ask for a while (it is full, or it took a
    /// message from another consumer): a consumer that waits on a broker
    /// subscription cancels it, so that no message comes that nobody
    /// asked for. What came anyway is handed out by the next `next`. The
    /// default does nothing.
    async fn pause(&mut self) -> Result<(), QueueError> {
        Ok(())
    }

    /// How many messages the owner could take now (its free slots): a
    /// consumer that subscribes asks the broker for no more than that
    /// ahead. A hint; the default ignores it.
    fn set_room(&mut self, room: usize) {
        let _ = room;
    }

    /// A message that is there now, without waiting for one to come:
    /// `None` when there is none, or when this consumer cannot tell
    /// without waiting (the default, and a subscribed broker consumer
    /// that has nothing in hand). A queue with [`QueueOptions::pull`]
    /// answers it (one ask of the broker): that is how a consumer of
    /// several queues takes one queue's messages before another's. While
    /// `prefetch` deliveries are unacked it says `None`.
    async fn try_next(&mut self) -> Result<Option<Delivery<M>>, QueueError> {
        Ok(None)
    }
}

/// How a delivery is settled; implemented by each queue.
#[async_trait]
pub trait Settle: Send {
    /// Removes the message for good.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Returns the message to the queue (`requeue`) or dead-letters it.
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), QueueError>;
}

/// A message handed to a consumer. Settle it with [`Delivery::ack`] or
/// [`Delivery::nack`]; dropping it unsettled returns it to the queue.
pub struct Delivery<M> {
    message: M,
    deliveries: u32,
    settle: Box<dyn Settle>,
}

impl<M> Delivery<M> {
    /// Builds a delivery (for queue implementations).
    pub fn new(message: M, deliveries: u32, settle: Box<dyn Settle>) -> Self {
        Delivery {
            message,
            deliveries,
            settle,
        }
    }

    /// The message.
    pub fn message(&self) -> &M {
        &self.message
    }

    /// How many times this message has been handed out, this time included.
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// Done with the message: remove it.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }

    /// Give the message back (`requeue`), or dead-letter it.
    pub async fn nack(self, requeue: bool) -> Result<(), QueueError> {
        self.settle.nack(requeue).await
    }
}

impl<M: std::fmt::Debug> std::fmt::Debug for Delivery<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

//! Routing by label: which queue holds the jobs of each `runs_on` label.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{JobQueue, QueueError};

/// The queue of each label. A host consumes the queues of the labels it
/// serves and no other, so a host serving `a` never sees a job of `b`.
#[async_trait]
pub trait LabelQueues<M>: Send + Sync + std::fmt::Debug
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The queue `label`'s messages go to. Two labels may share a queue
    /// (the same `Arc`): [`OneQueue`] gives every label the same one.
    async fn queue(&self, label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError>;

    /// The retry lane of `label`: where work that was already tried goes
    /// (an attempt lost with its host, a retry), to be taken before
    /// anything of [`LabelQueues::queue`], so that it does not wait behind
    /// a backlog of fresh work. The default has no lane of its own: the
    /// label's queue.
    async fn retries(&self, label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        self.queue(label).await
    }
}

/// One queue for every label: the embedded deployment, where one engine
/// serves every label; with a retry lane of its own when made
/// [`OneQueue::with_retries`].
pub struct OneQueue<M> {
    queue: Arc<dyn JobQueue<M>>,
    retries: Option<Arc<dyn JobQueue<M>>>,
}

impl<M> OneQueue<M> {
    /// Every label's messages in `queue`, retries too.
    pub fn new(queue: Arc<dyn JobQueue<M>>) -> OneQueue<M> {
        OneQueue {
            queue,
            retries: None,
        }
    }

    /// Every label's messages in `queue`, and their retries in `retries`
    /// ([`LabelQueues::retries`]).
    pub fn with_retries(queue: Arc<dyn JobQueue<M>>, retries: Arc<dyn JobQueue<M>>) -> OneQueue<M> {
        OneQueue {
            queue,
            retries: Some(retries),
        }
    }
}

impl<M> std::fmt::Debug for OneQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneQueue")
            .field("retry_lane", &self.retries.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<M> LabelQueues<M> for OneQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn queue(&self, _label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        Ok(self.queue.clone())
    }

    async fn retries(&self, _label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        Ok(self.retries.as_ref().unwrap_or(&self.queue).clone())
    }
}

/// Opens a label's queue.
type Opener<M> = Box<
    dyn Fn(
            String,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Arc<dyn JobQueue<M>>, QueueError>> + Send>,
        > + Send
        + Sync,
>;

/// A queue per label, opened on first use by `open(label)` and kept; a
/// retry lane per label too when made [`PerLabel::with_retries`].
pub struct PerLabel<M> {
    open: Opener<M>,
    open_retries: Option<Opener<M>>,
    open_queues: tokio::sync::Mutex<HashMap<String, Arc<dyn JobQueue<M>>>>,
    open_lanes: tokio::sync::Mutex<HashMap<String, Arc<dyn JobQueue<M>>>>,
}

impl<M> std::fmt::Debug for PerLabel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerLabel")
            .field("retry_lanes", &self.open_retries.is_some())
            .finish_non_exhaustive()
    }
}

impl<M> PerLabel<M> {
    /// Queues opened by `open` (which gets the label).
    pub fn new<F, Fut>(open: F) -> PerLabel<M>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut:
            std::future::Future<Output = Result<Arc<dyn JobQueue<M>>, QueueError>> + Send + 'static,
    {
        PerLabel {
            open: Box::new(move |label| Box::pin(open(label))),
            open_retries: None,
            open_queues: tokio::sync::Mutex::new(HashMap::new()),
            open_lanes: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// These queues, with each label's retry lane
    /// ([`LabelQueues::retries`]) opened by `open` (which gets the label).
    pub fn with_retries<F, Fut>(mut self, open: F) -> PerLabel<M>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut:
            std::future::Future<Output = Result<Arc<dyn JobQueue<M>>, QueueError>> + Send + 'static,
    {
        self.open_retries = Some(Box::new(move |label| Box::pin(open(label))));
        self
    }
}

/// The queue of `label` in `open_queues`, opened by `open` the first time
/// (the map is held while opening, so that a label is opened once).
async fn opened<M>(
    open_queues: &tokio::sync::Mutex<HashMap<String, Arc<dyn JobQueue<M>>>>,
    open: &Opener<M>,
    label: &str,
) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
    let mut open_queues = open_queues.lock().await;
    if let Some(q) = open_queues.get(label) {
        return Ok(q.clone());
    }
    let q = open(label.to_string()).await?;
    open_queues.insert(label.to_string(), q.clone());
    Ok(q)
}

#[async_trait]
impl<M> LabelQueues<M> for PerLabel<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn queue(&self, label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        opened(&self.open_queues, &self.open, label).await
    }

    async fn retries(&self, label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        match &self.open_retries {
            Some(open) => opened(&self.open_lanes, open, label).await,
            None => self.queue(label).await,
        }
    }
}

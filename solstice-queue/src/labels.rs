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
}

/// One queue for every label: the embedded deployment, where one engine
/// serves every label.
pub struct OneQueue<M>(Arc<dyn JobQueue<M>>);

impl<M> OneQueue<M> {
    /// Every label's messages in `queue`.
    pub fn new(queue: Arc<dyn JobQueue<M>>) -> OneQueue<M> {
        OneQueue(queue)
    }
}

impl<M> std::fmt::Debug for OneQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneQueue").finish_non_exhaustive()
    }
}

#[async_trait]
impl<M> LabelQueues<M> for OneQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn queue(&self, _label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        Ok(self.0.clone())
    }
}

/// A queue per label, opened on first use by `open(label)` and kept.
pub struct PerLabel<M> {
    #[allow(clippy::type_complexity)]
    open: Box<
        dyn Fn(
                String,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<Arc<dyn JobQueue<M>>, QueueError>>
                        + Send,
                >,
            > + Send
            + Sync,
    >,
    open_queues: tokio::sync::Mutex<HashMap<String, Arc<dyn JobQueue<M>>>>,
}

impl<M> std::fmt::Debug for PerLabel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerLabel").finish_non_exhaustive()
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
            open_queues: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<M> LabelQueues<M> for PerLabel<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn queue(&self, label: &str) -> Result<Arc<dyn JobQueue<M>>, QueueError> {
        // Held while opening, so that a label is opened once.
        let mut open = self.open_queues.lock().await;
        if let Some(q) = open.get(label) {
            return Ok(q.clone());
        }
        let q = (self.open)(label.to_string()).await?;
        open.insert(label.to_string(), q.clone());
        Ok(q)
    }
}

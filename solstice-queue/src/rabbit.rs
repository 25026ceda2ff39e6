//! The queue on RabbitMQ (`lapin`), for many hosts.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Consumer, DeadLetter, Delivery, JobQueue, QueueError, QueueOptions, Settle};

/// The header that carries why Solstice dead-lettered a message itself.
const REASON: &str = "x-solstice-reason";
/// How long `publish` keeps trying while the broker is away.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(120);

fn broker(e: impl std::error::Error + Send + Sync + 'static) -> QueueError {
    QueueError::Broker(Box::new(e))
}

/// A durable queue on RabbitMQ: a quorum queue `NAME`, its dead letters in
/// `NAME.dead` (through the fanout exchange `NAME.dlx`).
///
/// - `publish` sends a persistent message and returns once the broker
///   confirmed it (publisher confirms); while the broker is away it
///   reconnects and tries again, for up to two minutes.
/// - Consumers ack manually, with `prefetch` as the channel's QoS. A
///   consumer whose connection drops reconnects by itself and subscribes
///   again; what it held unacked goes back to the queue (the broker
///   requeues a closed channel's deliveries), so nothing is lost and a
///   message may come twice: at least once, as the contract says.
/// - The delivery count is the quorum queue's `x-delivery-count` + 1;
///   `x-delivery-limit` is [`QueueOptions::max_deliveries`] - 1, so a
///   message returned after its last allowed delivery is dead-lettered by
///   the broker itself. Undecodable messages are moved to `NAME.dead`
///   with the decode error as their reason.
///
/// The reconnect loop is this type's own: a new connection, channel and
/// consumer each time, instead of lapin's automatic recovery (reported to
/// hang across broker restarts).
pub struct RabbitQueue<M> {
    shared: Arc<Shared>,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for RabbitQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitQueue")
            .field("queue", &self.shared.queue)
            .finish_non_exhaustive()
    }
}

struct Shared {
    url: String,
    queue: String,
    options: QueueOptions,
    /// The publishing connection and its confirm-mode channel.
    link: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl Shared {
    fn dead(&self) -> String {
        format!("{}.dead", self.queue)
    }

    fn dlx(&self) -> String {
        format!("{}.dlx", self.queue)
    }

    /// A new connection, with the queues declared (idempotent).
    async fn connect(&self) -> Result<(Connection, Channel), QueueError> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .map_err(broker)?;
        let channel = connection.create_channel().await.map_err(broker)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                &self.dlx(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(&self.dead(), durable, quorum.clone())
            .await
            .map_err(broker)?;
        channel
            .queue_bind(
                &self.dead(),
                &self.dlx(),
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let mut main = quorum;
        main.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dlx().into()),
        );
        main.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.options.max_deliveries.max(1)) - 1),
        );
        channel
            .queue_declare(&self.queue, durable, main)
            .await
            .map_err(broker)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        Ok((connection, channel))
    }

    /// Publishes every body to `queue`, all before waiting for the
    /// broker's confirms (pipelined); on a failure the whole batch is
    /// published again (at least once), reconnecting as `publish_to` does.
    async fn publish_all(&self, queue: &str, bodies: &[Vec<u8>]) -> Result<(), QueueError> {
        if bodies.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let mut link = self.link.lock().await;
                let usable = link
                    .as_ref()
                    .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
                if !usable {
                    *link = Some(self.connect().await?);
                }
                let (_, channel) = link.as_ref().ok_or(QueueError::Closed)?;
                let mut confirms = Vec::with_capacity(bodies.len());
                for body in bodies {
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    confirms.push(
                        channel
                            .basic_publish(
                                "",
                                queue,
                                BasicPublishOptions::default(),
                                body,
                                properties,
                            )
                            .await
                            .map_err(broker)?,
                    );
                }
                drop(link);
                for confirm in confirms {
                    match confirm.await.map_err(broker)? {
                        Confirmation::Ack(_) => {}
                        other => {
                            return Err(QueueError::Broker(
                                format!("the broker did not take a message: {other:?}").into(),
                            ));
                        }
                    }
                }
                Ok(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(queue, error = %crate::chain(&e), "publishing a batch failed; reconnecting");
                    *self.link.lock().await = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `body` to `queue` (through the default exchange) and
    /// waits for the broker's confirm, reconnecting while the broker is
    /// away (up to [`PUBLISH_PATIENCE`]).
    async fn publish_to(
        &self,
        queue: &str,
        body: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let mut link = self.link.lock().await;
                let usable = link
                    .as_ref()
                    .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
                if !usable {
                    *link = Some(self.connect().await?);
                }
                let (_, channel) = link.as_ref().ok_or(QueueError::Closed)?;
                let mut properties = BasicProperties::default().with_delivery_mode(2);
                if let Some(h) = headers.clone() {
                    properties = properties.with_headers(h);
                }
                let confirm = channel
                    .basic_publish("", queue, BasicPublishOptions::default(), body, properties)
                    .await
                    .map_err(broker)?;
                drop(link);
                match confirm.await.map_err(broker)? {
                    Confirmation::Ack(_) => Ok(()),
                    other => Err(QueueError::Broker(
                        format!("the broker did not take the message: {other:?}").into(),
                    )),
                }
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(queue, error = %crate::chain(&e), "publishing failed; reconnecting");
                    *self.link.lock().await = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<M> RabbitQueue<M> {
    /// Connects to `url` (`amqp://user:pass@host:5672/%2f`) and declares
    /// the queue `name` and its dead-letter queue (durable; idempotent).
    pub async fn connect(
        url: impl Into<String>,
        name: impl Into<String>,
        options: QueueOptions,
    ) -> Result<Self, QueueError> {
        let shared = Arc::new(Shared {
            url: url.into(),
            queue: name.into(),
            options,
            link: tokio::sync::Mutex::new(None),
        });
        let link = shared.connect().await?;
        *shared.link.lock().await = Some(link);
        Ok(RabbitQueue {
            shared,
            _message: PhantomData,
        })
    }

    /// A queue per label (`runs_on`): `PREFIX.LABEL`, each with its own
    /// dead letters, connected on first use. A label that is not 1 to 64
    /// of `A-Z a-z 0-9 . _ -` is refused (it would name a queue).
    pub fn per_label(
        url: impl Into<String>,
        prefix: impl Into<String>,
        options: QueueOptions,
    ) -> crate::PerLabel<M>
    where
        M: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let url = url.into();
        let prefix = prefix.into();
        crate::PerLabel::new(move |label: String| {
            let url = url.clone();
            let name = format!("{prefix}.{label}");
            async move {
                let usable = !label.is_empty()
                    && label.len() <= 64
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !usable {
                    return Err(QueueError::Broker(
                        format!("{label:?} cannot name a queue").into(),
                    ));
                }
                let queue: Arc<dyn JobQueue<M>> =
                    Arc::new(RabbitQueue::<M>::connect(url, name, options).await?);
                Ok(queue)
            }
        })
    }

    /// Deletes the queue and its dead letters (tests, operators).
    pub async fn delete(&self) -> Result<(), QueueError> {
        let (connection, channel) = self.shared.connect().await?;
        for q in [self.shared.queue.clone(), self.shared.dead()] {
            channel
                .queue_delete(&q, QueueDeleteOptions::default())
                .await
                .map_err(broker)?;
        }
        let _ = connection.close(200, "deleted").await;
        *self.shared.link.lock().await = None;
        Ok(())
    }
}

fn delivery_count(properties: &BasicProperties) -> u32 {
    let returned = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            AMQPValue::ShortShortUInt(n) => Some(u32::from(n)),
            _ => None,
        })
        .unwrap_or(0);
    returned.saturating_add(1)
}

fn reason_of(properties: &BasicProperties) -> String {
    let headers = properties.headers().as_ref();
    if let Some(AMQPValue::LongString(r)) = headers.and_then(|h| h.inner().get(REASON)) {
        return r.to_string();
    }
    // Dead-lettered by the broker: x-death's latest entry says why.
    let death = headers
        .and_then(|h| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first().cloned(),
            _ => None,
        });
    match death {
        Some(AMQPValue::FieldTable(t)) => match t.inner().get("reason") {
            Some(AMQPValue::LongString(r)) if r.to_string() == "delivery_limit" => {
                "delivered too many times".into()
            }
            Some(AMQPValue::LongString(r)) if r.to_string() == "rejected" => {
                "rejected by a consumer".into()
            }
            Some(AMQPValue::LongString(r)) => r.to_string(),
            _ => "dead-lettered by the broker".into(),
        },
        _ => "dead-lettered".into(),
    }
}

#[async_trait]
impl<M> JobQueue<M> for RabbitQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn publish(&self, message: &M) -> Result<(), QueueError> {
        let body = serde_json::to_vec(message).map_err(|e| QueueError::Encode(Box::new(e)))?;
        self.shared
            .publish_to(&self.shared.queue, &body, None)
            .await
    }

    async fn publish_many(&self, messages: &[M]) -> Result<(), QueueError> {
        let bodies = messages
            .iter()
            .map(|m| serde_json::to_vec(m).map_err(|e| QueueError::Encode(Box::new(e))))
            .collect::<Result<Vec<_>, _>>()?;
        self.shared.publish_all(&self.shared.queue, &bodies).await
    }

    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.shared
            .publish_to(&self.shared.queue, &body, None)
            .await
    }

    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<M>>, QueueError> {
        let mut consumer = RabbitConsumer {
            shared: self.shared.clone(),
            prefetch: u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX),
            link: None,
            _message: PhantomData,
        };
        consumer.subscribe().await?;
        Ok(Box::new(consumer))
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        // Read without taking: every message fetched unacked on a channel
        // of its own, which closing hands back to the queue.
        let (connection, channel) = self.shared.connect().await?;
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(&self.shared.dead(), BasicGetOptions { no_ack: false })
            .await
            .map_err(broker)?
        {
            let d = &message.delivery;
            out.push(DeadLetter::new(d.data.clone(), reason_of(&d.properties)));
        }
        let _ = connection.close(200, "read the dead letters").await;
        Ok(out)
    }
}

struct RabbitConsumer<M> {
    shared: Arc<Shared>,
    prefetch: u16,
    link: Option<(Connection, lapin::Consumer)>,
    _message: PhantomData<fn() -> M>,
}

impl<M> RabbitConsumer<M> {
    async fn subscribe(&mut self) -> Result<(), QueueError> {
        let (connection, channel) = self.shared.connect().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let stream = channel
            .basic_consume(
                &self.shared.queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        self.link = Some((connection, stream));
        Ok(())
    }
}

impl<M> Drop for RabbitConsumer<M> {
    fn drop(&mut self) {
        // Closing the connection returns the unacked deliveries.
        if let Some((connection, _)) = self.link.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = connection.close(200, "consumer dropped").await;
            });
        }
    }
}

#[async_trait]
impl<M> Consumer<M> for RabbitConsumer<M>
where
    M: DeserializeOwned + Send + 'static,
{
    async fn next(&mut self) -> Result<Delivery<M>, QueueError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let item = match self.link.as_mut() {
                Some((_, stream)) => stream.next().await,
                None => None,
            };
            let delivery = match item {
                Some(Ok(d)) => d,
                other => {
                    // The connection or the channel went away: a new one,
                    // after a pause that grows while the broker is away.
                    if let Some(Err(e)) = other {
                        tracing::warn!(queue = %self.shared.queue, error = %e, "consumer lost its channel; reconnecting");
                    }
                    if let Some((connection, _)) = self.link.take() {
                        let _ = connection.close(200, "reconnecting").await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if let Err(e) = self.subscribe().await {
                        tracing::warn!(queue = %self.shared.queue, error = %crate::chain(&e), "cannot subscribe yet");
                    }
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let count = delivery_count(&delivery.properties);
            match serde_json::from_slice::<M>(&delivery.data) {
                Ok(message) => {
                    return Ok(Delivery::new(
                        message,
                        count,
                        Box::new(RabbitSettle {
                            acker: Some(delivery.acker),
                        }),
                    ));
                }
                Err(e) => {
                    let mut headers = FieldTable::default();
                    headers.insert(
                        ShortString::from(REASON),
                        AMQPValue::LongString(format!("cannot decode: {e}").into()),
                    );
                    self.shared
                        .publish_to(&self.shared.dead(), &delivery.data, Some(headers))
                        .await?;
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(broker)?;
                }
            }
        }
    }
}

struct RabbitSettle {
    acker: Option<lapin::acker::Acker>,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        match self.acker.take() {
            Some(a) => a.ack(BasicAckOptions::default()).await.map_err(broker),
            None => Ok(()),
        }
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        match self.acker.take() {
            Some(a) => a
                .nack(BasicNackOptions {
                    requeue,
                    multiple: false,
                })
                .await
                .map_err(broker),
            None => Ok(()),
        }
    }
}

impl Drop for RabbitSettle {
    fn drop(&mut self) {
        // Unsettled: back to the queue.
        if let Some(acker) = self.acker.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await;
            });
        }
    }
}

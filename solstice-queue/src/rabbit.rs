//! The queue on RabbitMQ (`lapin`), for many hosts.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Consumer, DeadLetter, Delivery, JobQueue, QueueError, QueueOptions, Settle};

/// The header that carries why Solstice dead-lettered a message itself.
const REASON: &str = "x-solstice-reason";
/// A label's queue being opened.
type Opening<M> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Arc<dyn JobQueue<M>>, QueueError>> + Send>,
>;

/// How often a pulling consumer ([`QueueOptions::pull`]) asks while its
/// owner waits.
const PULL_EVERY: Duration = Duration::from_millis(250);
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
/// - Consumers ack manually and hold at most `prefetch` unsettled. They
///   subscribe only while their owner has room, with that room
///   ([`Consumer::set_room`]) as the subscription's prefetch, and cancel
///   the subscription when it is full ([`Consumer::pause`]), handing back
///   what the broker pushed that nobody asked for. A consumer whose
///   connection drops reconnects by itself; what it held unacked goes back
///   to the queue (the broker requeues a closed channel's deliveries), so
///   nothing is lost and a message may come twice: at least once, as the
///   contract says.
/// - `publish_many` sends every message before awaiting the confirms.
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

    /// Publishes every body to `queue` (through the default exchange), all
    /// before waiting for the broker's confirms (pipelined), and returns
    /// once every one is confirmed. While the broker is away it reconnects
    /// and publishes the whole batch again (at least once), for up to
    /// [`PUBLISH_PATIENCE`].
    async fn publish_all(
        &self,
        queue: &str,
        bodies: &[&[u8]],
        headers: Option<&FieldTable>,
    ) -> Result<(), QueueError> {
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
                    let mut properties = BasicProperties::default().with_delivery_mode(2);
                    if let Some(h) = headers {
                        properties = properties.with_headers(h.clone());
                    }
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
                // Others may publish while these are confirmed.
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
                    // Once at WARN per publish, then one line per try at
                    // DEBUG.
                    if backoff == Duration::from_millis(100) {
                        tracing::warn!(queue, error = %crate::chain(&e), "publishing failed; reconnecting and trying again");
                    } else {
                        tracing::debug!(queue, error = %crate::chain(&e), "publishing failed again");
                    }
                    *self.link.lock().await = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves a delivered message: publishes `body` to `queue` (confirmed),
    /// then acks the delivery. A failure leaves the delivery unacked, so
    /// the message is never lost (it may be published twice).
    async fn move_to(
        &self,
        queue: &str,
        body: &[u8],
        headers: Option<FieldTable>,
        acker: &lapin::acker::Acker,
    ) -> Result<(), QueueError> {
        self.publish_to(queue, body, headers).await?;
        acker.ack(BasicAckOptions::default()).await.map_err(broker)
    }

    /// Publishes one body (see [`Shared::publish_all`]).
    async fn publish_to(
        &self,
        queue: &str,
        body: &[u8],
        headers: Option<FieldTable>,
    ) -> Result<(), QueueError> {
        self.publish_all(queue, &[body], headers.as_ref()).await
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
    /// dead letters, connected on first use; and each label's retry lane
    /// ([`crate::LabelQueues::retries`]) `PREFIX.LABEL:retries`, pulled
    /// ([`QueueOptions::pull`]). A label that is not 1 to 64 of
    /// `A-Z a-z 0-9 . _ -` is refused (it would name a queue).
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
        let lanes = (url.clone(), prefix.clone());
        crate::PerLabel::new(Self::label_opener(url, prefix, "", options)).with_retries(
            Self::label_opener(lanes.0, lanes.1, ":retries", options.with_pull(true)),
        )
    }

    /// Opens `PREFIX.LABEL` + `suffix` for a label.
    fn label_opener(
        url: String,
        prefix: String,
        suffix: &'static str,
        options: QueueOptions,
    ) -> impl Fn(String) -> Opening<M> + Send + Sync + 'static
    where
        M: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        move |label: String| {
            let url = url.clone();
            let name = format!("{prefix}.{label}{suffix}");
            Box::pin(async move {
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
            })
        }
    }

    /// Deletes the queue, its dead letters and their exchange (tests,
    /// operators).
    pub async fn delete(&self) -> Result<(), QueueError> {
        let (connection, channel) = self.shared.connect().await?;
        for q in [self.shared.queue.clone(), self.shared.dead()] {
            channel
                .queue_delete(&q, QueueDeleteOptions::default())
                .await
                .map_err(broker)?;
        }
        channel
            .exchange_delete(&self.shared.dlx(), ExchangeDeleteOptions::default())
            .await
            .map_err(broker)?;
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
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        self.shared
            .publish_all(&self.shared.queue, &bodies, None)
            .await
    }

    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.shared
            .publish_to(&self.shared.queue, &body, None)
            .await
    }

    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<M>>, QueueError> {
        let mut link = Link::default();
        link.connect(&self.shared).await?;
        Ok(Box::new(RabbitConsumer {
            shared: self.shared.clone(),
            prefetch: prefetch.max(1),
            room: Arc::new(std::sync::atomic::AtomicUsize::new(prefetch.max(1))),
            held: Arc::new(Held::default()),
            link: Arc::new(tokio::sync::Mutex::new(link)),
            pause: Arc::new(tokio::sync::Notify::new()),
            fetching: None,
        }))
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

/// Deliveries a consumer holds unsettled, and a wake-up when one is settled.
#[derive(Default)]
struct Held {
    count: std::sync::atomic::AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Held {
    fn release(&self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.settled.notify_waiters();
    }
}

/// A consumer that subscribes only while its owner has room, asking the
/// broker for no more messages ahead than that room
/// ([`Consumer::set_room`], at most `prefetch`), and cancels the
/// subscription when the owner is full ([`Consumer::pause`]). So a full
/// host is pushed nothing more; what reached it between its last free
/// slot and the cancel (a few at most: deliveries acked by the owner
/// open the window again) is handed back to the queue at the pause, for
/// another host. `prefetch` bounds what it holds unsettled.
///
/// The fetching runs in a task of its own, so that a `next` that is
/// dropped half-way (a `select!`) loses nothing: the message it was
/// getting is handed out by the next call.
struct RabbitConsumer<M> {
    shared: Arc<Shared>,
    prefetch: usize,
    room: Arc<std::sync::atomic::AtomicUsize>,
    held: Arc<Held>,
    link: Arc<tokio::sync::Mutex<Link>>,
    pause: Arc<tokio::sync::Notify>,
    fetching: Option<tokio::task::JoinHandle<Option<Fetched<M>>>>,
}

impl<M> RabbitConsumer<M> {
    /// A fetched message as a delivery, counted as held until settled.
    fn handed_out(&self, f: Fetched<M>) -> Delivery<M> {
        self.held
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Delivery::new(
            f.message,
            f.deliveries,
            Box::new(RabbitSettle {
                acker: Some(f.acker),
                held: Some(self.held.clone()),
            }),
        )
    }
}

/// A decoded message and how to settle it.
struct Fetched<M> {
    message: M,
    deliveries: u32,
    acker: lapin::acker::Acker,
    /// The body as it came, to hand it back unasked ([`Consumer::pause`]).
    body: Vec<u8>,
}

/// A consumer's connection and what waits on it.
#[derive(Default)]
struct Link {
    connection: Option<(Connection, Channel)>,
    /// The subscription, while the owner has room.
    subscription: Option<lapin::Consumer>,
    /// Messages that came before the subscription was cancelled, handed
    /// out first.
    arrived: std::collections::VecDeque<lapin::message::Delivery>,
    /// The broker is away (said once, at WARN, until it is back).
    away: bool,
}

impl Link {
    async fn connect(&mut self, shared: &Shared) -> Result<(), QueueError> {
        let (connection, channel) = shared.connect().await?;
        self.connection = Some((connection, channel));
        if std::mem::take(&mut self.away) {
            tracing::info!(queue = %shared.queue, "the consumer reached the broker again");
        }
        Ok(())
    }

    /// Logs a failure to reach the broker: the first of an outage at WARN,
    /// the others (one per try) at DEBUG.
    fn trouble(&mut self, shared: &Shared, what: &str, e: &QueueError) {
        if std::mem::replace(&mut self.away, true) {
            tracing::debug!(queue = %shared.queue, error = %crate::chain(e), "{what}");
        } else {
            tracing::warn!(queue = %shared.queue, error = %crate::chain(e), "{what}; trying again until it is back");
        }
    }

    /// Drops the connection (the broker returns what it held).
    async fn disconnect(&mut self) {
        self.subscription = None;
        self.arrived.clear();
        if let Some((connection, _)) = self.connection.take() {
            let _ = connection.close(200, "reconnecting").await;
        }
    }

    /// Ends the subscription; what it brought meanwhile is kept.
    async fn unsubscribe(&mut self) -> Result<(), QueueError> {
        if let (Some(mut subscription), Some((_, channel))) =
            (self.subscription.take(), self.connection.as_ref())
        {
            channel
                .basic_cancel(subscription.tag().as_str(), BasicCancelOptions::default())
                .await
                .map_err(broker)?;
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(50), subscription.next()).await
            {
                self.arrived.push_back(d);
            }
        }
        Ok(())
    }

    /// The next raw delivery: one that came already, or the next the
    /// subscription (made with `room` as its prefetch) brings; `None`
    /// when paused first.
    async fn fetch(
        &mut self,
        shared: &Shared,
        room: u16,
        pause: &tokio::sync::Notify,
    ) -> Result<Option<lapin::message::Delivery>, QueueError> {
        if let Some(d) = self.arrived.pop_front() {
            return Ok(Some(d));
        }
        if self.connection.is_none() {
            self.connect(shared).await?;
        }
        if self.subscription.is_none() {
            let Some((_, channel)) = &self.connection else {
                return Err(QueueError::Closed);
            };
            channel
                .basic_qos(room.max(1), BasicQosOptions::default())
                .await
                .map_err(broker)?;
            self.subscription = Some(
                channel
                    .basic_consume(
                        &shared.queue,
                        "",
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(broker)?,
            );
        }
        let Some(subscription) = self.subscription.as_mut() else {
            return Err(QueueError::Closed);
        };
        tokio::select! {
            item = subscription.next() => match item {
                Some(Ok(d)) => Ok(Some(d)),
                Some(Err(e)) => Err(broker(e)),
                None => Err(QueueError::Closed),
            },
            () = pause.notified() => {
                self.unsubscribe().await?;
                Ok(None)
            }
        }
    }
}

/// Fetches until a message decodes (dead-lettering those that do not) or
/// the consumer is paused, reconnecting while the broker is away.
async fn fetch_one<M: DeserializeOwned>(
    shared: Arc<Shared>,
    link: Arc<tokio::sync::Mutex<Link>>,
    room: u16,
    pause: Arc<tokio::sync::Notify>,
) -> Option<Fetched<M>> {
    let mut link = link.lock().await;
    let mut backoff = Duration::from_millis(100);
    loop {
        let delivery = match link.fetch(&shared, room, &pause).await {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                // The connection or the channel went away: a new one,
                // after a pause that grows while the broker is away.
                link.trouble(&shared, "consumer lost its channel", &e);
                link.disconnect().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if let Err(e) = link.connect(&shared).await {
                    link.trouble(&shared, "cannot subscribe", &e);
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        match decoded(&shared, &mut link, delivery).await {
            Decoded::Message(fetched) => return Some(fetched),
            Decoded::DeadLettered => {}
            Decoded::Stuck => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What became of a delivery.
enum Decoded<M> {
    /// It decoded.
    Message(Fetched<M>),
    /// It did not, and is now in the dead letters.
    DeadLettered,
    /// It did not, and could not be moved to the dead letters: it stays on
    /// the queue (unacked, it comes back with the next connection; this
    /// one is dropped).
    Stuck,
}

/// A delivery decoded, or moved to the dead letters when it does not
/// decode.
async fn decoded<M: DeserializeOwned>(
    shared: &Shared,
    link: &mut Link,
    delivery: lapin::message::Delivery,
) -> Decoded<M> {
    let deliveries = delivery_count(&delivery.properties);
    match serde_json::from_slice::<M>(&delivery.data) {
        Ok(message) => Decoded::Message(Fetched {
            message,
            deliveries,
            acker: delivery.acker,
            body: delivery.data,
        }),
        Err(e) => {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from(REASON),
                AMQPValue::LongString(format!("cannot decode: {e}").into()),
            );
            let moved = shared
                .move_to(
                    &shared.dead(),
                    &delivery.data,
                    Some(headers),
                    &delivery.acker,
                )
                .await;
            match moved {
                Ok(()) => Decoded::DeadLettered,
                Err(e) => {
                    tracing::warn!(queue = %shared.queue, error = %crate::chain(&e), "cannot dead-letter an undecodable message yet; reconnecting");
                    link.disconnect().await;
                    Decoded::Stuck
                }
            }
        }
    }
}

/// One ask of the broker for a message ([`QueueOptions::pull`]): `None`
/// when the queue is empty (or the broker away: the consumer asks again
/// later).
async fn get_one<M: DeserializeOwned>(
    shared: Arc<Shared>,
    link: Arc<tokio::sync::Mutex<Link>>,
) -> Option<Fetched<M>> {
    let mut link = link.lock().await;
    // A few undecodable messages in a row are dead-lettered on the way.
    for _ in 0..16 {
        if link.connection.is_none()
            && let Err(e) = link.connect(&shared).await
        {
            link.trouble(&shared, "cannot reach the queue", &e);
            return None;
        }
        let (_, channel) = link.connection.as_ref()?;
        let got = channel
            .basic_get(&shared.queue, BasicGetOptions { no_ack: false })
            .await;
        match got {
            Ok(Some(got)) => match decoded(&shared, &mut link, got.delivery).await {
                Decoded::Message(fetched) => return Some(fetched),
                Decoded::DeadLettered => {}
                Decoded::Stuck => return None,
            },
            Ok(None) => return None,
            Err(e) => {
                link.trouble(&shared, "consumer lost its channel", &broker(e));
                link.disconnect().await;
                return None;
            }
        }
    }
    None
}

impl<M> Drop for RabbitConsumer<M> {
    fn drop(&mut self) {
        if let Some(task) = self.fetching.take() {
            task.abort();
        }
        // Closing the connection returns the unacked deliveries.
        let link = self.link.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut link = link.lock().await;
                link.subscription = None;
                link.arrived.clear();
                if let Some((connection, _)) = link.connection.take() {
                    let _ = connection.close(200, "consumer dropped").await;
                }
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
        loop {
            // At most `prefetch` unsettled.
            loop {
                let settled = self.held.settled.notified();
                if self.held.count.load(std::sync::atomic::Ordering::SeqCst) < self.prefetch {
                    break;
                }
                settled.await;
            }
            if self.shared.options.pull {
                // Asked while the owner waits, never ahead of it.
                if let Some(d) = self.try_next().await? {
                    return Ok(d);
                }
                tokio::time::sleep(PULL_EVERY).await;
                continue;
            }
            let room = self
                .room
                .load(std::sync::atomic::Ordering::SeqCst)
                .clamp(1, self.prefetch);
            let room = u16::try_from(room).unwrap_or(u16::MAX);
            let task = self.fetching.get_or_insert_with(|| {
                tokio::spawn(fetch_one::<M>(
                    self.shared.clone(),
                    self.link.clone(),
                    room,
                    self.pause.clone(),
                ))
            });
            let fetched = task.await;
            self.fetching = None;
            match fetched {
                Ok(Some(f)) => return Ok(self.handed_out(f)),
                // Paused before anything came, or the task died: ask again.
                Ok(None) | Err(_) => continue,
            }
        }
    }

    async fn try_next(&mut self) -> Result<Option<Delivery<M>>, QueueError> {
        if self.held.count.load(std::sync::atomic::Ordering::SeqCst) >= self.prefetch {
            return Ok(None);
        }
        if !self.shared.options.pull {
            // Subscribed: only what a `next` that was dropped already got.
            if !self.fetching.as_ref().is_some_and(|t| t.is_finished()) {
                return Ok(None);
            }
        }
        // One ask, in a task of its own: a call dropped half-way loses
        // nothing (the next call takes what it got).
        let task = self.fetching.get_or_insert_with(|| {
            tokio::spawn(get_one::<M>(self.shared.clone(), self.link.clone()))
        });
        let fetched = task.await;
        self.fetching = None;
        Ok(match fetched {
            Ok(Some(f)) => Some(self.handed_out(f)),
            Ok(None) | Err(_) => None,
        })
    }

    async fn pause(&mut self) -> Result<(), QueueError> {
        // A fetch waiting on the subscription stops; then the subscription
        // ends, so that the broker pushes nothing more, and what came that
        // nobody took (a fetch that finished after its `next` was dropped,
        // what the subscription pushed ahead) goes back to the queue, for
        // another host: published again, then acked (not nacked: it was
        // never handed out, so it must not count toward the limit).
        if self.fetching.as_ref().is_some_and(|t| !t.is_finished()) {
            self.pause.notify_one();
        }
        let mut link = self.link.lock().await;
        link.unsubscribe().await?;
        if self.fetching.as_ref().is_some_and(|t| t.is_finished())
            && let Some(task) = self.fetching.take()
            && let Ok(Some(fetched)) = task.await
        {
            let returned = self
                .shared
                .move_to(&self.shared.queue, &fetched.body, None, &fetched.acker)
                .await;
            if let Err(e) = returned {
                // Unacked, it goes back when the connection closes.
                tracing::warn!(queue = %self.shared.queue, error = %crate::chain(&e), "cannot hand a message back yet");
            }
        }
        while let Some(d) = link.arrived.pop_front() {
            let returned = self
                .shared
                .move_to(&self.shared.queue, &d.data, None, &d.acker)
                .await;
            if let Err(e) = returned {
                // It stays unacked on this connection, which gives it
                // back when it closes; meanwhile the next `next` takes it.
                tracing::warn!(queue = %self.shared.queue, error = %crate::chain(&e), "cannot hand a message back yet");
                link.arrived.push_front(d);
                break;
            }
        }
        Ok(())
    }

    fn set_room(&mut self, room: usize) {
        self.room.store(room, std::sync::atomic::Ordering::SeqCst);
    }
}

struct RabbitSettle {
    acker: Option<lapin::acker::Acker>,
    held: Option<Arc<Held>>,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        if let Some(held) = self.held.take() {
            held.release();
        }
        match self.acker.take() {
            Some(a) => a.ack(BasicAckOptions::default()).await.map_err(broker),
            None => Ok(()),
        }
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), QueueError> {
        if let Some(held) = self.held.take() {
            held.release();
        }
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
        if let Some(held) = self.held.take() {
            held.release();
        }
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

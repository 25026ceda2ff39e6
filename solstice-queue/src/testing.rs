//! The conformance suite for [`JobQueue`] implementations.
//!
//! Every implementation runs the same checks; each check gets a fresh,
//! empty queue from the caller's factory:
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use solstice_queue::{MemoryQueue, testing};
//! testing::run_all(|options| async move { MemoryQueue::new(options) }).await;
//! # });
//! ```
//!
//! Waits for a message that must arrive are generous (10 s, so a loaded
//! machine does not fail them); checks that a message must *not* arrive wait
//! 200 ms, which a slow machine can only make pass more easily.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Consumer, JobQueue, QueueOptions};

/// The message type the suite publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMessage {
    /// Identifies the message within one check.
    pub id: u64,
    /// Some payload.
    pub text: String,
}

fn msg(id: u64) -> TestMessage {
    TestMessage {
        id,
        text: format!("message {id}"),
    }
}

const ARRIVES: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(200);

async fn next_id(
    consumer: &mut Box<dyn Consumer<TestMessage>>,
) -> (u64, crate::Delivery<TestMessage>) {
    let d = tokio::time::timeout(ARRIVES, consumer.next())
        .await
        .expect("a message arrives in time")
        .expect("the queue is open");
    (d.message().id, d)
}

async fn nothing_arrives(consumer: &mut Box<dyn Consumer<TestMessage>>) {
    if let Ok(Ok(d)) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("no message expected, got {:?}", d.message());
    }
}

/// Runs every check, each on a fresh queue from `make`.
pub async fn run_all<Q, F, Fut>(make: F)
where
    Q: JobQueue<TestMessage> + 'static,
    F: Fn(QueueOptions) -> Fut,
    Fut: Future<Output = Q>,
{
    let options = QueueOptions::default();
    delivers_in_order_and_ack_removes(&make(options).await).await;
    publish_many_appends_each_in_order(&make(options).await).await;
    nack_with_requeue_redelivers_and_counts(&make(options).await).await;
    nack_without_requeue_dead_letters(&make(options).await).await;
    dropped_delivery_is_redelivered(&make(options).await).await;
    dropped_consumer_returns_its_unacked_messages(&make(options).await).await;
    prefetch_bounds_unacked_deliveries(&make(options).await).await;
    undecodable_messages_are_dead_lettered(&make(options).await).await;
    too_many_deliveries_dead_letter(&make(options.with_max_deliveries(3)).await).await;
    competing_consumers_each_get_every_message_once(&make(options).await).await;
    // A pulled queue keeps the contract, and holds nothing unasked.
    let pulled = options.with_pull(true);
    delivers_in_order_and_ack_removes(&make(pulled).await).await;
    dropped_consumer_returns_its_unacked_messages(&make(pulled).await).await;
    competing_consumers_each_get_every_message_once(&make(pulled).await).await;
    a_pulled_queue_holds_nothing_for_a_consumer_that_does_not_ask(&make(pulled).await).await;
    try_next_takes_what_is_there_without_waiting(&make(pulled).await).await;
}

/// [`Consumer::try_next`] on a pulled queue: `None` at once when it is
/// empty, the message when one is there, `None` while `prefetch`
/// deliveries are unacked.
pub async fn try_next_takes_what_is_there_without_waiting(q: &dyn JobQueue<TestMessage>) {
    let mut c = q.consume(1).await.expect("consume");
    let empty = tokio::time::timeout(ARRIVES, c.try_next())
        .await
        .expect("answers without waiting for a message")
        .expect("open");
    assert!(empty.is_none());
    q.publish(&msg(7)).await.expect("publish");
    q.publish(&msg(8)).await.expect("publish");
    let d = tokio::time::timeout(ARRIVES, c.try_next())
        .await
        .expect("answers")
        .expect("open")
        .expect("the message that is there");
    assert_eq!(d.message().id, 7);
    let full = tokio::time::timeout(ARRIVES, c.try_next())
        .await
        .expect("answers")
        .expect("open");
    assert!(full.is_none(), "prefetch 1 and one unacked");
    d.ack().await.expect("ack");
    let (id, d) = next_id(&mut c).await;
    assert_eq!(id, 8);
    d.ack().await.expect("ack");
}

/// [`QueueOptions::pull`]: a consumer that took a message and does not ask
/// again (its host paused) holds nothing more: a message published after
/// goes to the next consumer that asks, at once.
pub async fn a_pulled_queue_holds_nothing_for_a_consumer_that_does_not_ask(
    q: &dyn JobQueue<TestMessage>,
) {
    q.publish(&msg(0)).await.expect("publish");
    let mut quiet = q.consume(10).await.expect("consume");
    quiet.set_room(10);
    let (id, _held) = next_id(&mut quiet).await;
    assert_eq!(id, 0);
    q.publish(&msg(1)).await.expect("publish");
    // Time for a broker to push it to the consumer that did not ask.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut asking = q.consume(10).await.expect("consume");
    let (id, d) = next_id(&mut asking).await;
    assert_eq!(id, 1, "the message went to the consumer that asked");
    d.ack().await.expect("ack");
}

/// Published order is delivery order; an acked message never comes back.
pub async fn delivers_in_order_and_ack_removes(q: &dyn JobQueue<TestMessage>) {
    for i in 0..5 {
        q.publish(&msg(i)).await.expect("publish");
    }
    let mut c = q.consume(10).await.expect("consume");
    for i in 0..5 {
        let (id, d) = next_id(&mut c).await;
        assert_eq!(id, i, "FIFO order");
        assert_eq!(d.deliveries(), 1);
        d.ack().await.expect("ack");
    }
    drop(c);
    let mut c = q.consume(10).await.expect("consume");
    nothing_arrives(&mut c).await;
    assert!(q.dead_letters().await.expect("dead letters").is_empty());
}

/// `publish_many` appends every message once, in order.
pub async fn publish_many_appends_each_in_order(q: &dyn JobQueue<TestMessage>) {
    let batch: Vec<TestMessage> = (0..300).map(msg).collect();
    q.publish_many(&batch).await.expect("publish many");
    q.publish_many(&[]).await.expect("publish none");
    let mut c = q.consume(50).await.expect("consume");
    for i in 0..300 {
        let (id, d) = next_id(&mut c).await;
        assert_eq!(id, i, "FIFO order");
        d.ack().await.expect("ack");
    }
    nothing_arrives(&mut c).await;
}

/// `nack(requeue)` hands the message out again, counting the delivery.
pub async fn nack_with_requeue_redelivers_and_counts(q: &dyn JobQueue<TestMessage>) {
    q.publish(&msg(7)).await.expect("publish");
    let mut c = q.consume(1).await.expect("consume");
    let (_, d) = next_id(&mut c).await;
    d.nack(true).await.expect("nack");
    let (id, d) = next_id(&mut c).await;
    assert_eq!((id, d.deliveries()), (7, 2));
    d.ack().await.expect("ack");
}

/// `nack` without requeue dead-letters the message.
pub async fn nack_without_requeue_dead_letters(q: &dyn JobQueue<TestMessage>) {
    q.publish(&msg(1)).await.expect("publish");
    let mut c = q.consume(1).await.expect("consume");
    let (_, d) = next_id(&mut c).await;
    d.nack(false).await.expect("nack");
    nothing_arrives(&mut c).await;
    let dead = q.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    let body: TestMessage = serde_json::from_slice(&dead[0].body).expect("body kept");
    assert_eq!(body, msg(1));
}

/// A delivery dropped without ack or nack comes back.
pub async fn dropped_delivery_is_redelivered(q: &dyn JobQueue<TestMessage>) {
    q.publish(&msg(3)).await.expect("publish");
    let mut c = q.consume(1).await.expect("consume");
    let (_, d) = next_id(&mut c).await;
    drop(d);
    let (id, d) = next_id(&mut c).await;
    assert_eq!((id, d.deliveries()), (3, 2));
    d.ack().await.expect("ack");
}

/// When a consumer goes away, its unacked messages go to another one.
pub async fn dropped_consumer_returns_its_unacked_messages(q: &dyn JobQueue<TestMessage>) {
    for i in 0..3 {
        q.publish(&msg(i)).await.expect("publish");
    }
    let mut first = q.consume(3).await.expect("consume");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_id(&mut first).await);
    }
    let mut second = q.consume(3).await.expect("consume");
    nothing_arrives(&mut second).await;
    // The first consumer dies with its deliveries unsettled.
    std::mem::forget(held);
    drop(first);
    let mut got = BTreeSet::new();
    for _ in 0..3 {
        let (id, d) = next_id(&mut second).await;
        assert_eq!(d.deliveries(), 2);
        got.insert(id);
        d.ack().await.expect("ack");
    }
    assert_eq!(got, BTreeSet::from([0, 1, 2]));
}

/// A consumer never holds more than `prefetch` unacked deliveries.
pub async fn prefetch_bounds_unacked_deliveries(q: &dyn JobQueue<TestMessage>) {
    for i in 0..4 {
        q.publish(&msg(i)).await.expect("publish");
    }
    let mut c = q.consume(2).await.expect("consume");
    let (_, a) = next_id(&mut c).await;
    let (_, b) = next_id(&mut c).await;
    nothing_arrives(&mut c).await;
    a.ack().await.expect("ack");
    let (_, d) = next_id(&mut c).await;
    nothing_arrives(&mut c).await;
    b.ack().await.expect("ack");
    d.ack().await.expect("ack");
    let (_, e) = next_id(&mut c).await;
    e.ack().await.expect("ack");
}

/// A body that does not decode never reaches a consumer.
pub async fn undecodable_messages_are_dead_lettered(q: &dyn JobQueue<TestMessage>) {
    q.publish_bytes(b"{not json".to_vec())
        .await
        .expect("publish");
    q.publish_bytes(b"{\"id\":\"wrong type\"}".to_vec())
        .await
        .expect("publish");
    q.publish(&msg(9)).await.expect("publish");
    let mut c = q.consume(1).await.expect("consume");
    let (id, d) = next_id(&mut c).await;
    assert_eq!(id, 9);
    d.ack().await.expect("ack");
    let dead = q.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].body, b"{not json");
    assert!(dead.iter().all(|d| d.reason.contains("decode")), "{dead:?}");
}

/// A message requeued too often is dead-lettered instead of crash-looping.
/// Needs a queue made with `max_deliveries: 3`.
pub async fn too_many_deliveries_dead_letter(q: &dyn JobQueue<TestMessage>) {
    q.publish(&msg(5)).await.expect("publish");
    let mut c = q.consume(1).await.expect("consume");
    for n in 1..=3 {
        let (_, d) = next_id(&mut c).await;
        assert_eq!(d.deliveries(), n);
        d.nack(true).await.expect("nack");
    }
    nothing_arrives(&mut c).await;
    let dead = q.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
}

/// Two consumers share 50 messages: each is processed exactly once.
pub async fn competing_consumers_each_get_every_message_once(q: &dyn JobQueue<TestMessage>) {
    let n = 50;
    for i in 0..n {
        q.publish(&msg(i)).await.expect("publish");
    }
    let mut a = q.consume(4).await.expect("consume");
    let mut b = q.consume(4).await.expect("consume");
    let mut seen = Vec::new();
    while (seen.len() as u64) < n {
        let (id, d) = tokio::select! {
            r = next_id(&mut a) => r,
            r = next_id(&mut b) => r,
        };
        d.ack().await.expect("ack");
        seen.push(id);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
    nothing_arrives(&mut a).await;
}

/// Deletes every queue and exchange of the broker at `url` whose name
/// `matches` (what tests made: a dead-letter exchange outlives its
/// queue otherwise), best-effort, blocking: for `Drop`s, also inside a
/// runtime. They are listed with `rabbitmqctl` and deleted over AMQP
/// (`rabbitmqctl` cannot delete an exchange).
#[cfg(feature = "rabbitmq")]
pub fn delete_broker_objects(url: &str, matches: impl Fn(&str) -> bool) {
    let list = |what: &str| -> Vec<String> {
        std::process::Command::new("rabbitmqctl")
            .args([&format!("list_{what}"), "-q", "--no-table-headers", "name"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|name| !name.is_empty() && matches(name))
                    .collect()
            })
            .unwrap_or_default()
    };
    let queues = list("queues");
    let exchanges = list("exchanges");
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let url = url.to_string();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(connection) =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            for q in &queues {
                let _ = channel
                    .queue_delete(q, lapin::options::QueueDeleteOptions::default())
                    .await;
            }
            for x in &exchanges {
                let _ = channel
                    .exchange_delete(x, lapin::options::ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "cleanup").await;
        });
    })
    .join();
}

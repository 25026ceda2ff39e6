//! `MemoryQueue` passes the conformance suite, and closes cleanly.

use solstice_queue::testing::{self, TestMessage};
use solstice_queue::{JobQueue, MemoryQueue, QueueError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_conforms() {
    testing::run_all(|options| async move { MemoryQueue::new(options) }).await;
}

#[tokio::test]
async fn close_wakes_waiting_consumers() {
    let q: MemoryQueue<TestMessage> = MemoryQueue::new(Default::default());
    let mut c = q.consume(1).await.expect("consume");
    let waiter = tokio::spawn(async move { c.next().await.map(|_| ()) });
    tokio::task::yield_now().await;
    q.close();
    let result = waiter.await.expect("task");
    assert!(matches!(result, Err(QueueError::Closed)));
    assert!(matches!(
        q.publish(&TestMessage {
            id: 1,
            text: String::new()
        })
        .await,
        Err(QueueError::Closed)
    ));
}

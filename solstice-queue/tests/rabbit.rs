//! `RabbitQueue` on the machine's RabbitMQ (127.0.0.1:5672, guest/guest;
//! `SOLSTICE_AMQP_URL` for another): the conformance suite, then the
//! broker restarted under a publisher and a consumer. One test, so the
//! restart never runs beside the suite; it fails (never skips) without a
//! broker.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use solstice_queue::testing::{self, TestMessage};
use solstice_queue::{JobQueue, QueueOptions, RabbitQueue};

fn url() -> String {
    std::env::var("SOLSTICE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn msg(id: u64) -> TestMessage {
    TestMessage {
        id,
        text: format!("message {id}"),
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker's application again when dropped, also when the test
/// fails: the machine's broker is left as it was found.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

/// Deletes the queues of earlier runs of this test that failed before
/// their own cleanup (`solstice-test-PID-...` of a process that is gone).
fn delete_leftovers() {
    testing::delete_broker_objects(&url(), |name| {
        name.strip_prefix("solstice-test-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_queue_conforms_and_survives_a_broker_restart() {
    delete_leftovers();
    let run = format!("solstice-test-{}", std::process::id());
    let made: Mutex<Vec<RabbitQueue<TestMessage>>> = Mutex::new(Vec::new());
    let counter = std::sync::atomic::AtomicUsize::new(0);
    testing::run_all(|options| {
        let name = format!(
            "{run}-{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let made = &made;
        async move {
            let q = RabbitQueue::connect(url(), name.clone(), options)
                .await
                .expect("the broker at 127.0.0.1:5672");
            // A handle of the same queue, to delete it afterwards.
            let handle = RabbitQueue::connect(url(), name, options)
                .await
                .expect("connect");
            made.lock().expect("lock").push(handle);
            q
        }
    })
    .await;
    let made = std::mem::take(&mut *made.lock().expect("lock"));
    for q in made {
        q.delete().await.expect("delete");
    }
    // Nothing of them is left: no queue, no dead letters, no exchange.
    for what in ["queues", "exchanges"] {
        let out = std::process::Command::new("rabbitmqctl")
            .args([&format!("list_{what}"), "-q", "--no-table-headers", "name"])
            .output()
            .expect("rabbitmqctl");
        let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| n.trim().starts_with(&format!("{run}-")))
            .map(str::to_string)
            .collect();
        assert!(left.is_empty(), "{what} left after delete: {left:?}");
    }

    // The broker restarts while a consumer holds deliveries and a
    // publisher is publishing: nothing published is lost, nothing acked
    // comes back.
    let name = format!("{run}-restart");
    let q = RabbitQueue::<TestMessage>::connect(url(), name.clone(), QueueOptions::default())
        .await
        .expect("connect");
    for i in 0..20 {
        q.publish(&msg(i)).await.expect("publish");
    }
    let mut consumer = q.consume(5).await.expect("consume");
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("in time")
            .expect("delivery");
        assert!(d.message().id < 5, "{:?}", d.message());
        d.ack().await.expect("ack");
    }
    let restart = Restart;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .expect("stop");
    // A new publisher while the broker is down: connecting needs the
    // broker, so it retries until it is back.
    let publisher = {
        let name = name.clone();
        tokio::spawn(async move {
            // Keeps trying while the broker is away.
            let mut q = None;
            for _ in 0..600 {
                match RabbitQueue::<TestMessage>::connect(
                    url(),
                    name.clone(),
                    QueueOptions::default(),
                )
                .await
                {
                    Ok(c) => {
                        q = Some(c);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let q = q.expect("the broker came back");
            for i in 20..25 {
                q.publish(&msg(i)).await.expect("publish after the restart");
            }
        })
    };
    // The long-lived handle publishes through the outage too.
    let during = {
        let q = std::sync::Arc::new(q);
        let q2 = q.clone();
        (q, tokio::spawn(async move { q2.publish(&msg(25)).await }))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .expect("start");
    drop(restart);
    publisher.await.expect("publisher task");
    during
        .1
        .await
        .expect("task")
        .expect("a publish during the outage lands once the broker is back");
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < 21 {
        let d = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} after the restart"))
            .expect("delivery");
        let id = d.message().id;
        assert!(id >= 5, "an acked message came back: {id}");
        seen.insert(id);
        // A delivery fetched before the restart cannot be acked on its dead
        // channel: the broker hands it out again (at least once).
        let _ = d.ack().await;
    }
    assert_eq!(seen, (5..26).collect::<BTreeSet<u64>>());
    drop(consumer);
    during.0.delete().await.expect("delete");
}

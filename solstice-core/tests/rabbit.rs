//! Engines on RabbitMQ (127.0.0.1:5672, guest/guest; `SOLSTICE_AMQP_URL`
//! for another), a queue per `runs_on` label: a host takes only the labels
//! it serves, and a job longer than the broker's delivery timeout is
//! delivered and run once. They fail (never skip) without a broker; the
//! tests of this file run one at a time (one changes a broker setting).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use solstice_core::engine::{
    Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, RunnerGuest,
};
use solstice_core::store::{JobStatus, RunId, RunStatus, SqlStore, StateStore};
use solstice_queue::{
    Consumer, DeadLetter, Delivery, JobQueue, LabelQueues, QueueError, QueueOptions, RabbitQueue,
};
use solstice_vmm::MockVmProvider;

fn url() -> String {
    std::env::var("SOLSTICE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test at a time in this binary.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The queues named `PREFIX.*`, deleted when dropped (also when the test
/// fails).
struct Queues(String);

impl Queues {
    fn new(test: &str) -> Queues {
        Queues(format!("solstice-test-{}-{test}", std::process::id()))
    }

    /// A queue per label under this prefix (each call its own connections,
    /// as each host has).
    fn per_label(&self) -> Arc<dyn LabelQueues<JobMessage>> {
        Arc::new(RabbitQueue::per_label(
            url(),
            self.0.clone(),
            QueueOptions::default(),
        ))
    }
}

/// Waits up to `secs` for `run` to end, and says how it ended.
async fn run_ends(engine: &Engine, run: RunId, secs: u64) -> RunStatus {
    tokio::time::timeout(Duration::from_secs(secs), engine.wait(run))
        .await
        .expect("the run ends")
        .expect("wait")
}

impl Drop for Queues {
    fn drop(&mut self) {
        let prefix = format!("{}.", self.0);
        solstice_queue::testing::delete_broker_objects(&url(), |name| name.starts_with(&prefix));
    }
}

async fn store(dir: &tempfile::TempDir) -> Arc<dyn StateStore> {
    Arc::new(
        SqlStore::connect(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .expect("store"),
    )
}

fn host(name: &str, labels: &[&str], capacity: usize) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.holder = name.into();
    config.capacity = capacity;
    config.labels = Some(labels.iter().map(|l| l.to_string()).collect());
    config.lease = Duration::from_secs(10);
    config.poll = Duration::from_millis(20);
    config
}

fn provider() -> Arc<MockVmProvider> {
    Arc::new(MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(
        FakeExecutor,
    )))))
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not after 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_takes_only_the_labels_it_serves() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = Queues::new("labels");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir).await;
    let queues = || prefix.per_label();
    // The planner runs nothing; `a` and `b` each serve one label; nobody
    // serves `c` yet.
    let planner =
        Engine::start_with_queues(host("planner", &[], 1), store.clone(), queues(), provider())
            .await
            .expect("planner");
    let a = Engine::start_with_queues(
        host("host-a", &["a"], 2),
        store.clone(),
        queues(),
        provider(),
    )
    .await
    .expect("host a");
    let b = Engine::start_with_queues(
        host("host-b", &["b"], 2),
        store.clone(),
        queues(),
        provider(),
    )
    .await
    .expect("host b");
    let wf = solstice_kdl::parse(
        r#"workflow {
            job id="a" runs_on="a" { matrix { n "1" "2" "3" "4" "5" "6"; }; step run="true"; }
            job id="b" runs_on="b" { matrix { n "1" "2" "3" "4" "5" "6"; }; step run="true"; }
            job id="c" runs_on="c" { step run="true"; }
        }"#,
    )
    .expect("workflow");
    let run = planner
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    wait_for("the jobs of `a` and `b` end", async || {
        store
            .jobs(run)
            .await
            .expect("jobs")
            .iter()
            .filter(|j| j.label != "c")
            .all(|j| j.status == JobStatus::Succeeded)
    })
    .await;
    for job in store.jobs(run).await.expect("jobs") {
        let attempts = store.attempts(job.id).await.expect("attempts");
        match job.label.as_str() {
            "c" => {
                assert_eq!(job.status, JobStatus::Queued, "no host serves `c`");
                assert!(attempts.is_empty(), "{attempts:?}");
            }
            label => {
                assert_eq!(attempts.len(), 1, "{}: {attempts:?}", job.key);
                assert_eq!(attempts[0].holder, format!("host-{label}"), "{}", job.key);
            }
        }
    }
    // A host that serves `c` comes: the queued job's message is waiting.
    let c = Engine::start_with_queues(
        host("host-c", &["c"], 1),
        store.clone(),
        queues(),
        provider(),
    )
    .await
    .expect("host c");
    let status = run_ends(&planner, run, 60).await;
    assert_eq!(status, RunStatus::Succeeded);
    for engine in [planner, a, b, c] {
        engine.shutdown().await;
    }
}

/// Counts the deliveries the engine gets.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn LabelQueues<JobMessage>>,
    delivered: Arc<AtomicUsize>,
}

struct CountingQueue {
    inner: Arc<dyn JobQueue<JobMessage>>,
    delivered: Arc<AtomicUsize>,
}

struct CountingConsumer {
    inner: Box<dyn Consumer<JobMessage>>,
    delivered: Arc<AtomicUsize>,
}

#[async_trait]
impl LabelQueues<JobMessage> for Counting {
    async fn queue(&self, label: &str) -> Result<Arc<dyn JobQueue<JobMessage>>, QueueError> {
        Ok(Arc::new(CountingQueue {
            inner: self.inner.queue(label).await?,
            delivered: self.delivered.clone(),
        }))
    }
    async fn retries(&self, label: &str) -> Result<Arc<dyn JobQueue<JobMessage>>, QueueError> {
        Ok(Arc::new(CountingQueue {
            inner: self.inner.retries(label).await?,
            delivered: self.delivered.clone(),
        }))
    }
}

#[async_trait]
impl JobQueue<JobMessage> for CountingQueue {
    async fn publish(&self, message: &JobMessage) -> Result<(), QueueError> {
        self.inner.publish(message).await
    }
    async fn publish_bytes(&self, body: Vec<u8>) -> Result<(), QueueError> {
        self.inner.publish_bytes(body).await
    }
    async fn consume(&self, prefetch: usize) -> Result<Box<dyn Consumer<JobMessage>>, QueueError> {
        Ok(Box::new(CountingConsumer {
            inner: self.inner.consume(prefetch).await?,
            delivered: self.delivered.clone(),
        }))
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters().await
    }
}

#[async_trait]
impl Consumer<JobMessage> for CountingConsumer {
    async fn next(&mut self) -> Result<Delivery<JobMessage>, QueueError> {
        let d = self.inner.next().await?;
        self.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(d)
    }
    async fn try_next(&mut self) -> Result<Option<Delivery<JobMessage>>, QueueError> {
        let d = self.inner.try_next().await?;
        if d.is_some() {
            self.delivered.fetch_add(1, Ordering::SeqCst);
        }
        Ok(d)
    }
    async fn pause(&mut self) -> Result<(), QueueError> {
        self.inner.pause().await
    }
    fn set_room(&mut self, room: usize) {
        self.inner.set_room(room);
    }
}

/// Sets the broker's delivery timeout (and how often channels check it)
/// for channels opened from now on; puts the old values back when
/// dropped. RabbitMQ 3.10 has no per-queue `x-consumer-timeout` (3.12
/// does), so the setting is the node's, for the length of this test.
struct DeliveryTimeout(Vec<(&'static str, String)>);

impl DeliveryTimeout {
    fn set(ms: u64) -> DeliveryTimeout {
        let mut old = Vec::new();
        for (key, value) in [("consumer_timeout", ms), ("channel_tick_interval", 250)] {
            let was = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")]);
            old.push((key, was.trim().to_string()));
            rabbitmqctl(&[
                "eval",
                &format!("application:set_env(rabbit, {key}, {value})."),
            ]);
        }
        DeliveryTimeout(old)
    }
}

impl Drop for DeliveryTimeout {
    fn drop(&mut self) {
        for (key, was) in &self.0 {
            let expr = match was.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
                Some(value) => format!("application:set_env(rabbit, {key}, {value})."),
                None => format!("application:unset_env(rabbit, {key})."),
            };
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["eval", &expr])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_delivery_timeout_is_delivered_and_run_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = Queues::new("timeout");
    let _timeout = DeliveryTimeout::set(2_000);
    // The control: a plain subscription holding a delivery unacked past
    // the timeout loses its channel, and the message goes back to the
    // queue; so the setting is in force. (RabbitQueue's consumers never
    // hold a subscribed delivery: see docs/engine.md.)
    let probe = RabbitQueue::<JobMessage>::connect(
        url(),
        format!("{}.probe", prefix.0),
        QueueOptions::default(),
    )
    .await
    .expect("probe queue");
    let msg: JobMessage = serde_json::from_str(r#"{"run_id":1,"job_id":1}"#).expect("message");
    {
        use futures_util::StreamExt;
        let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .basic_qos(1, lapin::options::BasicQosOptions::default())
            .await
            .expect("qos");
        let mut subscription = channel
            .basic_consume(
                &format!("{}.probe", prefix.0),
                "control",
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("subscribe");
        probe.publish(&msg).await.expect("publish");
        let held = subscription.next().await.expect("a delivery").expect("ok");
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(_)) = subscription.next().await {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the broker did not close the channel within 30 s"
        );
        drop(held);
        let _ = connection.close(200, "control done").await;
    }
    let mut consumer = probe.consume(1).await.expect("consume");
    let again = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the message went back to the queue")
        .expect("delivery");
    assert_eq!(
        again.deliveries(),
        2,
        "returned once by the broker's timeout"
    );
    again.ack().await.expect("ack");
    drop(consumer);

    // The job sleeps three timeouts; its delivery was acked at the claim.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir).await;
    let delivered = Arc::new(AtomicUsize::new(0));
    let queues = Arc::new(Counting {
        inner: prefix.per_label(),
        delivered: delivered.clone(),
    });
    let engine = Engine::start_with_queues(
        host("long", &["default"], 1),
        store.clone(),
        queues,
        provider(),
    )
    .await
    .expect("engine");
    let wf = solstice_kdl::parse(r#"workflow { job id="long" { step run="sleep 6"; } }"#)
        .expect("workflow");
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = run_ends(&engine, run, 60).await;
    assert_eq!(status, RunStatus::Succeeded);
    let job = store.jobs(run).await.expect("jobs").remove(0);
    assert_eq!(store.attempts(job.id).await.expect("attempts").len(), 1);
    // Past another timeout, nothing came back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(delivered.load(Ordering::SeqCst), 1, "delivered once");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_host_keeps_going() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = Queues::new("poison");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir).await;
    let queues = prefix.per_label();
    let engine = Engine::start_with_queues(
        host("poisoned", &["default"], 2),
        store.clone(),
        queues.clone(),
        provider(),
    )
    .await
    .expect("engine");
    // Garbage first, on the queue the host consumes, then real work.
    let queue = queues.queue("default").await.expect("queue");
    queue
        .publish_bytes(b"\xff not a job message".to_vec())
        .await
        .expect("publish garbage");
    queue
        .publish_bytes(br#"{"run_id": "x"}"#.to_vec())
        .await
        .expect("publish a wrong shape");
    let wf = solstice_kdl::parse(
        r#"workflow { job id="after" { matrix { n "1" "2" "3"; }; step run="true"; } }"#,
    )
    .expect("workflow");
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = run_ends(&engine, run, 60).await;
    assert_eq!(status, RunStatus::Succeeded);
    let dead = queue.dead_letters().await.expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].body, b"\xff not a job message");
    assert!(
        !dead[0].reason.is_empty() && !dead[1].reason.is_empty(),
        "{dead:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_holds_no_message_another_host_could_run() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = Queues::new("full");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir).await;
    let queues = || prefix.per_label();
    let a = Engine::start_with_queues(
        host("host-a", &["default"], 1),
        store.clone(),
        queues(),
        provider(),
    )
    .await
    .expect("host a");
    let long = solstice_kdl::parse(r#"workflow { job id="long" { step run="sleep 8"; } }"#)
        .expect("workflow");
    let first = a.submit(&long, "{}", Checkout::None).await.expect("submit");
    wait_for("host a runs the long job", async || {
        store
            .jobs(first)
            .await
            .expect("jobs")
            .iter()
            .all(|j| j.status == JobStatus::Running)
    })
    .await;
    // Host a is full. A second job is queued while it is the only host: a
    // consumer that took messages ahead would now hold it.
    let short = solstice_kdl::parse(r#"workflow { job id="short" { step run="true"; } }"#)
        .expect("workflow");
    let second = a
        .submit(&short, "{}", Checkout::None)
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = Engine::start_with_queues(
        host("host-b", &["default"], 1),
        store.clone(),
        queues(),
        provider(),
    )
    .await
    .expect("host b");
    let status = tokio::time::timeout(Duration::from_secs(5), b.wait(second))
        .await
        .expect("host b ran the second job while host a was still busy")
        .expect("wait");
    assert_eq!(status, RunStatus::Succeeded);
    let job = store.jobs(second).await.expect("jobs").remove(0);
    let attempts = store.attempts(job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].holder, "host-b");
    assert_eq!(
        store.jobs(first).await.expect("jobs")[0].status,
        JobStatus::Running,
        "the long job is still running on host a"
    );
    let _ = a.wait(first).await;
    for engine in [a, b] {
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_serving_two_labels_takes_from_both() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = Queues::new("two");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&dir).await;
    let queues = prefix.per_label();
    let engine = Engine::start_with_queues(
        host("host-ab", &["a", "b"], 3),
        store.clone(),
        queues,
        provider(),
    )
    .await
    .expect("engine");
    let values: Vec<String> = (0..60).map(|i| format!("\"{i}\"")).collect();
    let wf = solstice_kdl::parse(&format!(
        r#"workflow {{
            job id="a" runs_on="a" {{ matrix {{ n {v}; }}; step run="true"; }}
            job id="b" runs_on="b" {{ matrix {{ n {v}; }}; step run="sleep 0.05"; }}
        }}"#,
        v = values.join(" ")
    ))
    .expect("workflow");
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = run_ends(&engine, run, 120).await;
    assert_eq!(status, RunStatus::Succeeded);
    for job in store.jobs(run).await.expect("jobs") {
        assert_eq!(
            store.attempts(job.id).await.expect("attempts").len(),
            1,
            "{}",
            job.key
        );
    }
    engine.shutdown().await;
}

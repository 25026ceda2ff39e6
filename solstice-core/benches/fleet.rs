//! A fleet on PostgreSQL + RabbitMQ against one process on SQLite + the
//! memory queue, in one run: N one-step jobs (default 10,000) with the mock
//! provider (the real runner code over gRPC, a fake step executor), through
//!
//! 1. one engine on SQLite and the in-process queue (the baseline);
//! 2. PostgreSQL and RabbitMQ (a queue per label), with one orchestrator
//!    process;
//! 3. the same with three orchestrator processes.
//!
//! The orchestrators are this program started again as children
//! (`SOLSTICE_FLEET_ROLE=orchestrator`); the parent plans and submits the
//! runs through an engine that runs nothing, as the integration daemon's
//! does. Then the time from an orchestrator's SIGKILL to its job's next
//! attempt starting on another (default lease: 30 s).
//!
//! `cargo bench -p solstice-core --bench fleet` (SOLSTICE_BENCH_JOBS=N,
//! SOLSTICE_BENCH_CAPACITY=C per orchestrator (default 64),
//! SOLSTICE_BENCH_LEASE=S for the death measurement, SOLSTICE_BENCH_PARTS=
//! throughput,death to choose).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_core::engine::{
    Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, RunnerGuest, now_ms,
};
use solstice_core::store::{AttemptStatus, RunStatus, SqlStore, StateStore};
use solstice_kdl::{Job, Step, Workflow};
use solstice_queue::{LabelQueues, MemoryQueue, OneQueue, QueueOptions, RabbitQueue};
use solstice_vmm::MockVmProvider;

fn amqp() -> String {
    std::env::var("SOLSTICE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn postgres() -> String {
    std::env::var("SOLSTICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workflow(n: usize, step: &str) -> Workflow {
    let mut workflow = Workflow::new(
        (0..n)
            .map(|i| Job::new(format!("j{i}"), vec![Step::new(step)]))
            .collect(),
    );
    workflow.name = Some("fleet".into());
    workflow
}

fn provider() -> Arc<MockVmProvider> {
    let guest = if std::path::Path::new("/dev/shm").is_dir() {
        RunnerGuest::in_dir(Arc::new(FakeExecutor), "/dev/shm")
    } else {
        RunnerGuest::new(Arc::new(FakeExecutor))
    };
    Arc::new(MockVmProvider::new(Arc::new(guest)))
}

fn config(holder: &str, labels: Option<Vec<String>>, capacity: usize, lease: u64) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.holder = holder.into();
    config.labels = labels;
    config.capacity = capacity;
    config.poll = Duration::from_millis(200);
    config.lease = Duration::from_secs(lease);
    config
}

/// Child mode: one orchestrator until its stdin closes.
fn orchestrator() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let schema = std::env::var("SOLSTICE_FLEET_SCHEMA").expect("schema");
        let store = SqlStore::connect_in_schema(&postgres(), Some(&schema))
            .await
            .expect("postgres");
        let queues: Arc<dyn LabelQueues<JobMessage>> = Arc::new(RabbitQueue::per_label(
            amqp(),
            std::env::var("SOLSTICE_FLEET_PREFIX").expect("prefix"),
            QueueOptions::default(),
        ));
        let holder = std::env::var("SOLSTICE_FLEET_HOLDER").expect("holder");
        let engine = Engine::start_with_queues(
            config(
                &holder,
                Some(vec!["default".into()]),
                env_or("SOLSTICE_FLEET_CAPACITY", 64),
                env_or("SOLSTICE_FLEET_LEASE", 30),
            ),
            Arc::new(store),
            queues,
            provider(),
        )
        .await
        .expect("engine");
        println!("ready");
        // Until the parent closes our stdin (or kills us).
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await
        .expect("stdin");
        engine.shutdown().await;
    });
}

struct Orchestrators(Vec<(String, Child)>);

impl Orchestrators {
    fn start(n: usize, schema: &str, prefix: &str, capacity: usize, lease: u64) -> Orchestrators {
        let me = std::env::current_exe().expect("this program");
        let mut children = Vec::new();
        for i in 1..=n {
            let holder = format!("orch-{i}");
            let mut child = Command::new(&me)
                .env("SOLSTICE_FLEET_ROLE", "orchestrator")
                .env("SOLSTICE_FLEET_SCHEMA", schema)
                .env("SOLSTICE_FLEET_PREFIX", prefix)
                .env("SOLSTICE_FLEET_HOLDER", &holder)
                .env("SOLSTICE_FLEET_CAPACITY", capacity.to_string())
                .env("SOLSTICE_FLEET_LEASE", lease.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("an orchestrator");
            let mut ready = String::new();
            BufReader::new(child.stdout.as_mut().expect("stdout"))
                .read_line(&mut ready)
                .expect("ready");
            assert_eq!(ready.trim(), "ready", "{holder} did not start");
            children.push((holder, child));
        }
        Orchestrators(children)
    }

    fn kill(&mut self, holder: &str) {
        if let Some(i) = self.0.iter().position(|(h, _)| h == holder) {
            let (_, mut child) = self.0.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Orchestrators {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // Closing stdin asks for an orderly stop.
            drop(child.stdin.take());
        }
        for (_, child) in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// A schema and queue prefix of their own, removed when dropped.
struct Place {
    schema: String,
    prefix: String,
}

impl Place {
    fn new(what: &str) -> Place {
        let schema = format!("benchfleet_{}_{what}", std::process::id());
        Place {
            prefix: schema.replace('_', "-"),
            schema,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-q",
                "-c",
            ])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .output();
        let prefix = format!("{}.", self.prefix);
        solstice_queue::testing::delete_broker_objects(&amqp(), |name| name.starts_with(&prefix));
    }
}

/// Submits N jobs (runs of at most `MAX_RUN_JOBS`) and waits for them all.
async fn submit_and_wait(engine: &Engine, n: usize) -> Duration {
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut left = n;
    while left > 0 {
        let here = left.min(solstice_kdl::MAX_RUN_JOBS);
        left -= here;
        runs.push(
            engine
                .submit(&workflow(here, "true"), "{}", Checkout::None)
                .await
                .expect("submit"),
        );
    }
    for run in runs {
        let status = engine.wait(run).await.expect("wait");
        assert_eq!(status, RunStatus::Succeeded, "run {run}");
    }
    started.elapsed()
}

async fn throughput(n: usize, capacity: usize) {
    let mut results: Vec<(String, f64)> = Vec::new();
    // 1. One process, SQLite and the memory queue.
    {
        let dir = tempfile::tempdir().expect("temp");
        let store = SqlStore::connect(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await
        .expect("sqlite");
        let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
        let engine = Engine::start_with_queues(
            config("alone", None, capacity, 30),
            Arc::new(store),
            Arc::new(OneQueue::new(queue)),
            provider(),
        )
        .await
        .expect("engine");
        let took = submit_and_wait(&engine, n).await;
        engine.shutdown().await;
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "sqlite + memory queue, one process, capacity {capacity}: {n} jobs in {:.2} s, {rate:.0} jobs/s",
            took.as_secs_f64()
        );
        results.push(("sqlite + memory, 1 process".into(), rate));
    }
    // 2, 3. PostgreSQL + RabbitMQ with 1 and 3 orchestrator processes.
    for hosts in [1usize, 3] {
        let place = Place::new(&format!("t{hosts}"));
        let store = SqlStore::connect_in_schema(&postgres(), Some(&place.schema))
            .await
            .expect("postgres");
        let queues: Arc<dyn LabelQueues<JobMessage>> = Arc::new(RabbitQueue::per_label(
            amqp(),
            place.prefix.clone(),
            QueueOptions::default(),
        ));
        let planner = Engine::start_with_queues(
            config("planner", Some(Vec::new()), 1, 30),
            Arc::new(store),
            queues,
            provider(),
        )
        .await
        .expect("planner");
        let fleet = Orchestrators::start(hosts, &place.schema, &place.prefix, capacity, 30);
        let took = submit_and_wait(&planner, n).await;
        drop(fleet);
        let per_host = count_by_holder(planner.store()).await;
        planner.shutdown().await;
        let rate = n as f64 / took.as_secs_f64();
        println!(
            "postgres + rabbitmq, {hosts} orchestrator process(es), capacity {capacity} each: {n} jobs in {:.2} s, {rate:.0} jobs/s; jobs per host: {per_host:?}",
            took.as_secs_f64()
        );
        results.push((
            format!("postgres + rabbitmq, {hosts} orchestrator(s)"),
            rate,
        ));
    }
    let (base_label, base) = results[0].clone();
    for (label, rate) in &results[1..] {
        println!("{label} / {base_label}: {:.2}", rate / base);
    }
}

/// How many attempts each holder made (the schema is this measurement's
/// own: its runs are numbered from 1).
async fn count_by_holder(store: &Arc<dyn StateStore>) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    let mut run = 1;
    while let Ok(jobs) = store.jobs(solstice_core::store::RunId::new(run)).await {
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            for a in store.attempts(job.id).await.unwrap_or_default() {
                *out.entry(a.holder).or_default() += 1;
            }
        }
        run += 1;
    }
    out
}

async fn death(lease: u64) {
    let place = Place::new("death");
    let store = SqlStore::connect_in_schema(&postgres(), Some(&place.schema))
        .await
        .expect("postgres");
    let queues: Arc<dyn LabelQueues<JobMessage>> = Arc::new(RabbitQueue::per_label(
        amqp(),
        place.prefix.clone(),
        QueueOptions::default(),
    ));
    let planner = Engine::start_with_queues(
        config("planner", Some(Vec::new()), 1, lease),
        Arc::new(store),
        queues,
        provider(),
    )
    .await
    .expect("planner");
    let mut fleet = Orchestrators::start(2, &place.schema, &place.prefix, 1, lease);
    let run = planner
        .submit(&workflow(1, "sleep 3"), "{}", Checkout::None)
        .await
        .expect("submit");
    let store = planner.store().clone();
    let job = store.jobs(run).await.expect("jobs")[0].id;
    let first = loop {
        if let Some(a) = store
            .attempts(job)
            .await
            .expect("attempts")
            .into_iter()
            .next()
        {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    fleet.kill(&first.holder);
    let killed = now_ms();
    let second = loop {
        let attempts = store.attempts(job).await.expect("attempts");
        if let Some(a) = attempts.get(1) {
            break a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = planner.wait(run).await.expect("wait");
    let waited = second.started_at - killed;
    let bound = lease as i64 * 1000 * 3 / 2;
    println!(
        "death -> next attempt: lease {lease} s: attempt 2 started on {} {:.1} s after {} was killed (bound: lease + one reaper pass = {:.1} s); ratio to the bound {:.2}; attempt 1 {:?}, run {status}",
        second.holder,
        waited as f64 / 1000.0,
        first.holder,
        bound as f64 / 1000.0,
        waited as f64 / bound as f64,
        store
            .attempts(job)
            .await
            .expect("attempts")
            .first()
            .map(|a| a.status)
            .unwrap_or(AttemptStatus::Running),
    );
    drop(fleet);
    planner.shutdown().await;
}

fn main() {
    if std::env::var("SOLSTICE_FLEET_ROLE").as_deref() == Ok("orchestrator") {
        orchestrator();
        return;
    }
    let n: usize = env_or("SOLSTICE_BENCH_JOBS", 10_000);
    let capacity: usize = env_or("SOLSTICE_BENCH_CAPACITY", 64);
    let lease: u64 = env_or("SOLSTICE_BENCH_LEASE", 30);
    let parts = std::env::var("SOLSTICE_BENCH_PARTS").unwrap_or_else(|_| "throughput,death".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if parts.contains("throughput") {
            throughput(n, capacity).await;
        }
        if parts.contains("death") {
            death(lease).await;
        }
    });
}

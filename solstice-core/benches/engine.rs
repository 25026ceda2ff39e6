//! Engine throughput: N one-step jobs (default 10,000, in runs of at most
//! `MAX_RUN_JOBS`) through the memory
//! queue, the mock provider (the real runner code over gRPC, with the fake
//! executor) and the store, once with SQLite and once with PostgreSQL.
//!
//! `cargo bench -p solstice-core --bench engine` (SOLSTICE_BENCH_JOBS=N to change N)

use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_core::engine::{
    Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, Listen, RunnerGuest,
};
use solstice_core::store::{RunStatus, SqlStore, StateStore};
use solstice_kdl::{Job, Step, Workflow};
use solstice_queue::{MemoryQueue, QueueOptions};
use solstice_vmm::MockVmProvider;

fn workflow(n: usize) -> Workflow {
    let mut workflow = Workflow::new(
        (0..n)
            .map(|i| Job::new(format!("j{i}"), vec![Step::new("true")]))
            .collect(),
    );
    workflow.name = Some("throughput".into());
    workflow
}

async fn measure(
    label: &str,
    store: Arc<dyn StateStore>,
    n: usize,
    capacity: usize,
    guest_dir: Option<&str>,
) -> f64 {
    // Each mock VM's runner makes its workspace directory (two mkdirs and
    // two rmdirs per job); where is the guest's business, not the engine's.
    let guest = match guest_dir {
        Some(dir) => RunnerGuest::in_dir(Arc::new(FakeExecutor), dir),
        None => RunnerGuest::new(Arc::new(FakeExecutor)),
    };
    let provider = MockVmProvider::new(Arc::new(guest));
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    // SOLSTICE_BENCH_ENDPOINT=unix: runners reach the engine over a unix
    // socket instead of loopback TCP.
    let socket_dir = tempfile::tempdir().expect("temp");
    let listen = match std::env::var("SOLSTICE_BENCH_ENDPOINT").as_deref() {
        Ok("unix") => Listen::Unix(socket_dir.path().join("runner.sock")),
        _ => EngineConfig::default().listen,
    };
    let config = {
        let mut value = EngineConfig::default();
        value.capacity = capacity;
        value.poll = Duration::from_millis(200);
        value.listen = listen;
        value
    };
    let engine = Engine::start(config, store, queue, Arc::new(provider))
        .await
        .expect("engine");
    // A run holds at most `MAX_RUN_JOBS` jobs: N jobs are several runs.
    let per_run = solstice_kdl::MAX_RUN_JOBS;
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut left = n;
    while left > 0 {
        let wf = workflow(left.min(per_run));
        left -= left.min(per_run);
        runs.push(
            engine
                .submit(&wf, "{}", Checkout::None)
                .await
                .expect("submit"),
        );
    }
    let submitted = started.elapsed();
    for &run in &runs {
        let status = engine.wait(run).await.expect("wait");
        check(label, &engine, run, status).await;
    }
    let elapsed = started.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<10} {n} jobs in {} runs, capacity {capacity}, runners over {}: {:.2} s, {rate:.0} jobs/s (submitting took {:.2} s)",
        runs.len(),
        match engine.endpoint() {
            solstice_vmm::RunnerEndpoint::Unix(_) => "a unix socket",
            _ => "TCP",
        },
        elapsed.as_secs_f64(),
        submitted.as_secs_f64()
    );
    engine.shutdown().await;
    rate
}

async fn check(label: &str, engine: &Engine, run: solstice_core::store::RunId, status: RunStatus) {
    if status != RunStatus::Succeeded {
        let jobs = engine.store().jobs(run).await.expect("jobs");
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for j in jobs
            .iter()
            .filter(|j| j.status != solstice_core::store::JobStatus::Succeeded)
        {
            *reasons
                .entry(format!(
                    "{}: {}",
                    j.status,
                    j.reason.clone().unwrap_or_default()
                ))
                .or_default() += 1;
        }
        panic!("{label}: run {status}: {reasons:#?}");
    }
}

fn main() {
    if let Ok(filter) = std::env::var("SOLSTICE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let n: usize = std::env::var("SOLSTICE_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // SOLSTICE_BENCH_CAPACITY=64 (default) or a list (32,64,128) for a sweep.
    let capacities: Vec<usize> = std::env::var("SOLSTICE_BENCH_CAPACITY")
        .unwrap_or_else(|_| "64".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // SOLSTICE_BENCH_GUEST_DIR: where the mock guests make their workspaces
    // (default /dev/shm when it exists; "tmp" for the system's temporary
    // directory).
    let guest_dir = match std::env::var("SOLSTICE_BENCH_GUEST_DIR") {
        Ok(d) if d == "tmp" => None,
        Ok(d) => Some(d),
        Err(_) => std::path::Path::new("/dev/shm")
            .is_dir()
            .then(|| "/dev/shm".to_string()),
    };
    println!(
        "mock guest workspaces in {}",
        guest_dir
            .as_deref()
            .unwrap_or("the system temporary directory")
    );
    rt.block_on(async {
        // SOLSTICE_BENCH_STORES=sqlite,postgres (the default) selects the stores.
        let stores =
            std::env::var("SOLSTICE_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
        let dir = tempfile::tempdir().expect("temp");
        let mut results: Vec<(String, usize, f64)> = Vec::new();
        for &capacity in &capacities {
            if stores.contains("sqlite") {
                // A fresh database for every measurement.
                let path = dir.path().join(format!("bench-{capacity}.db"));
                let sqlite = SqlStore::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("sqlite");
                let rate = measure(
                    "sqlite",
                    Arc::new(sqlite),
                    n,
                    capacity,
                    guest_dir.as_deref(),
                )
                .await;
                results.push(("sqlite".into(), capacity, rate));
            }
            if stores.contains("postgres") {
                let url = std::env::var("SOLSTICE_TEST_POSTGRES")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let schema = format!(
                    "bench_{}_{}",
                    std::process::id(),
                    solstice_core::engine::now_ms()
                );
                let pg = SqlStore::connect_in_schema(&url, Some(&schema))
                    .await
                    .expect("postgres");
                let rate =
                    measure("postgres", Arc::new(pg), n, capacity, guest_dir.as_deref()).await;
                results.push(("postgres".into(), capacity, rate));
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                    .await
                    .expect("drop the benchmark schema");
            }
        }
        // Ratios against the first measurement of this run.
        if let Some((base_label, base_cap, base)) = results.first().cloned() {
            for (label, capacity, rate) in &results[1..] {
                println!(
                    "{label} capacity {capacity} / {base_label} capacity {base_cap}: {:.2}",
                    rate / base
                );
            }
        }
    });
}

//! Engine throughput: N one-step jobs (default 10,000) through the memory
//! queue, the mock provider (the real runner code over gRPC, with the fake
//! executor) and the store, once with SQLite and once with PostgreSQL.
//!
//! `cargo bench -p solstice-core --bench engine` (SOLSTICE_BENCH_JOBS=N to change N)

use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_core::engine::{
    Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, RunnerGuest,
};
use solstice_core::store::{RunStatus, SqlStore, StateStore};
use solstice_kdl::{Job, Step, Workflow};
use solstice_queue::{MemoryQueue, QueueOptions};
use solstice_vmm::MockVmProvider;

fn workflow(n: usize) -> Workflow {
    Workflow {
        name: Some("throughput".into()),
        jobs: (0..n)
            .map(|i| Job {
                id: format!("j{i}"),
                steps: vec![Step {
                    run: "true".into(),
                    ..Step::default()
                }],
                ..Job::default()
            })
            .collect(),
        ..Workflow::default()
    }
}

async fn measure(label: &str, store: Arc<dyn StateStore>, n: usize, capacity: usize) -> f64 {
    let provider = MockVmProvider::new(Arc::new(RunnerGuest::new(Arc::new(FakeExecutor))));
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let config = EngineConfig {
        capacity,
        poll: Duration::from_millis(200),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config, store, queue, Arc::new(provider))
        .await
        .expect("engine");
    let wf = workflow(n);
    let started = Instant::now();
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = engine.wait(run).await.expect("wait");
    let elapsed = started.elapsed();
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
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<10} {n} jobs, capacity {capacity}: {:.2} s, {rate:.0} jobs/s",
        elapsed.as_secs_f64()
    );
    engine.shutdown().await;
    rate
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
    let capacity: usize = std::env::var("SOLSTICE_BENCH_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // SOLSTICE_BENCH_STORES=sqlite,postgres (the default) selects the stores.
        let stores =
            std::env::var("SOLSTICE_BENCH_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
        let dir = tempfile::tempdir().expect("temp");
        let mut a = None;
        if stores.contains("sqlite") {
            let sqlite = SqlStore::connect(&format!(
                "sqlite://{}",
                dir.path().join("bench.db").display()
            ))
            .await
            .expect("sqlite");
            a = Some(measure("sqlite", Arc::new(sqlite), n, capacity).await);
        }
        let mut b = None;
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
            b = Some(measure("postgres", Arc::new(pg), n, capacity).await);
        }
        if let (Some(a), Some(b)) = (a, b) {
            println!("postgres / sqlite: {:.2}", b / a);
        }
    });
}

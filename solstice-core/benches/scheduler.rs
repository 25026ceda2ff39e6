//! The scheduler on runs at the size limits (`solstice_kdl::MAX_RUN_JOBS`
//! jobs, up to `MAX_RUN_NEEDS` `needs` entries), against a baseline of the
//! same number of independent jobs measured in the same process: the ratio
//! is what `needs` costs. SQLite store, mock provider, memory queue.
//!
//! `cargo bench -p solstice-core --bench scheduler`

use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_core::engine::{
    Checkout, Engine, EngineConfig, FakeExecutor, JobMessage, RunnerGuest,
};
use solstice_core::store::{RunStatus, SqlStore};
use solstice_queue::{MemoryQueue, QueueOptions};
use solstice_vmm::MockVmProvider;

fn axis(name: &str, n: usize) -> String {
    let values: Vec<String> = (0..n).map(|v| format!("\"{name}{v}\"")).collect();
    format!("{name} {}", values.join(" "))
}

/// 1,000 jobs without `needs`.
fn independent() -> String {
    let jobs: String = (0..1000)
        .map(|i| format!("job id=\"j{i}\" {{ step run=\"true\"; }}\n"))
        .collect();
    format!("workflow {{\n{jobs}}}\n")
}

/// Four matrix jobs (256, 256, 256, 232 expansions) in a chain: 1,000 jobs,
/// each expansion waiting for every expansion of the job before.
fn matrix_chain() -> String {
    let mut jobs = String::new();
    for (i, (a, b)) in [(16, 16), (16, 16), (16, 16), (8, 29)].iter().enumerate() {
        let needs = if i == 0 {
            String::new()
        } else {
            format!("needs \"m{}\"; ", i - 1)
        };
        jobs.push_str(&format!(
            "job id=\"m{i}\" {{ {needs}matrix {{ {}; {}; }}; step run=\"true\"; }}\n",
            axis("a", *a),
            axis("b", *b)
        ));
    }
    format!("workflow {{\n{jobs}}}\n")
}

/// 100 jobs, then 900 that each need 11 of them: 9,900 `needs` entries.
fn wide_needs() -> String {
    let mut jobs = String::new();
    for i in 0..100 {
        jobs.push_str(&format!("job id=\"b{i}\" {{ step run=\"true\"; }}\n"));
    }
    for i in 0..900 {
        let needs: Vec<String> = (0..11)
            .map(|k| format!("\"b{}\"", (i + k * 9) % 100))
            .collect();
        jobs.push_str(&format!(
            "job id=\"c{i}\" {{ needs {}; step run=\"true\"; }}\n",
            needs.join(" ")
        ));
    }
    format!("workflow {{\n{jobs}}}\n")
}

async fn measure(label: &str, text: &str, dir: &std::path::Path) -> f64 {
    let wf = solstice_kdl::parse(text).expect("a workflow at the limits validates");
    let plan = wf.plan().expect("plan");
    let needs: usize = plan.jobs.iter().map(|j| j.job.needs.len()).sum();
    let store = SqlStore::connect(&format!(
        "sqlite://{}",
        dir.join(format!("{label}.db")).display()
    ))
    .await
    .expect("sqlite");
    let guest = match std::path::Path::new("/dev/shm").is_dir() {
        true => RunnerGuest::in_dir(Arc::new(FakeExecutor), "/dev/shm"),
        false => RunnerGuest::new(Arc::new(FakeExecutor)),
    };
    let provider = MockVmProvider::new(Arc::new(guest));
    let queue = Arc::new(MemoryQueue::<JobMessage>::new(QueueOptions::default()));
    let config = {
        let mut value = EngineConfig::default();
        value.capacity = 64;
        value.poll = Duration::from_millis(200);
        value
    };
    let engine = Engine::start(config, Arc::new(store), queue, Arc::new(provider))
        .await
        .expect("engine");
    let started = Instant::now();
    let run = engine
        .submit(&wf, "{}", Checkout::None)
        .await
        .expect("submit");
    let status = engine.wait(run).await.expect("wait");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status, RunStatus::Succeeded, "{label}");
    println!(
        "{label:<12} {} jobs, {needs:>5} needs entries: {secs:.2} s ({:.0} jobs/s)",
        plan.jobs.len(),
        plan.jobs.len() as f64 / secs
    );
    engine.shutdown().await;
    secs
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp");
        let base = measure("independent", &independent(), dir.path()).await;
        let chain = measure("matrix chain", &matrix_chain(), dir.path()).await;
        let wide = measure("wide needs", &wide_needs(), dir.path()).await;
        println!("matrix chain / independent: {:.2}", chain / base);
        println!("wide needs / independent:   {:.2}", wide / base);
    });
}

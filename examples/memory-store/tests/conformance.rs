//! The store passes `solstice-core`'s conformance suite, and a failed batch
//! leaves nothing behind.

use memory_store::MemoryStore;
use solstice_core::store::{Change, JobStatus, LogChunk, LogStream, NewJob, StateStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    solstice_core::testing::store::run_all(|| async { MemoryStore::new() }).await;
}

#[tokio::test]
async fn a_failed_batch_changes_nothing() {
    let store = MemoryStore::new();
    let job = NewJob {
        key: "a".into(),
        label: "linux".into(),
        spec: "{}".into(),
        needs: vec![],
        max_attempts: 1,
    };
    let run = store.create_run("CI", "{}", &[job], 0).await.expect("run");
    let id = store.jobs(run).await.expect("jobs")[0].id;
    store
        .transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
        .await
        .expect("queue");
    let attempt = store.claim(id, "e", 100, "h", 0).await.expect("claim");
    let chunk = LogChunk {
        attempt_id: attempt.id,
        seq: 0,
        step: None,
        stream: LogStream::System,
        data: b"x".to_vec(),
        at: 0,
    };
    store
        .append_logs(std::slice::from_ref(&chunk))
        .await
        .expect("first");
    let batch = [
        Change::SetVm {
            attempt: attempt.id,
            vm_id: "vm".into(),
        },
        Change::Logs(vec![chunk]),
    ];
    assert!(store.apply(&batch).await.is_err(), "a chunk stored twice");
    let after = store.attempt(attempt.id).await.expect("attempt");
    assert_eq!(after.and_then(|a| a.vm_id), None, "the batch is undone");
    assert_eq!(store.logs(attempt.id).await.expect("logs").len(), 1);
}

//! SQLite and PostgreSQL pass the same store conformance suite.
//!
//! PostgreSQL is the machine's server (127.0.0.1:5432, database `test`), or
//! `SOLSTICE_TEST_POSTGRES`. Under CI (`CI` set) a missing server fails the
//! test; elsewhere too, because a skipped test proves nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use solstice_core::store::{
    Applied, Attempt, AttemptId, Change, Job, JobId, JobStatus, LogChunk, NewJob, Run, RunId,
    RunStatus, SqlStore, StateStore, StepRecord, StoreError,
};
use solstice_core::testing::store::run_all;

fn postgres_url() -> String {
    std::env::var("SOLSTICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = AtomicU32::new(0);
    run_all(|| {
        let path = dir.path().join(format!(
            "state-{}.db",
            counter.fetch_add(1, Ordering::SeqCst)
        ));
        async move {
            SqlStore::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("sqlite")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let url = postgres_url();
    let counter = AtomicU32::new(0);
    let prefix = format!(
        "t{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    run_all(|| {
        let schema = format!("{prefix}_{}", counter.fetch_add(1, Ordering::SeqCst));
        let url = url.clone();
        async move {
            SqlStore::connect_in_schema(&url, Some(&schema))
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for this test: {e}"))
        }
    })
    .await;
    // Leave the shared database as it was (a failed check leaves its
    // schemas behind, to look at).
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    for i in 0..counter.load(Ordering::SeqCst) {
        conn.execute(format!("DROP SCHEMA IF EXISTS {prefix}_{i} CASCADE").as_str())
            .await
            .expect("drop the test schema");
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    assert!(SqlStore::connect("mysql://localhost/x").await.is_err());
    assert!(
        SqlStore::connect_in_schema(&postgres_url(), Some("bad; drop"))
            .await
            .is_err()
    );
}

/// A store that implements only the required methods (forwarding them to
/// SQLite) and keeps every default: the reads and conveniences another
/// implementation gets for free must pass the same suite.
struct OnlyRequired(SqlStore);

#[async_trait::async_trait]
impl StateStore for OnlyRequired {
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId, StoreError> {
        self.0.create_run(name, source, jobs, now).await
    }
    async fn run(&self, id: RunId) -> Result<Option<Run>, StoreError> {
        self.0.run(id).await
    }
    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<(), StoreError> {
        self.0.finish_run(id, status, now).await
    }
    async fn jobs(&self, run: RunId) -> Result<Vec<Job>, StoreError> {
        self.0.jobs(run).await
    }
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.0.job(id).await
    }
    async fn running_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.0.running_runs().await
    }
    async fn queued_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.0.queued_jobs().await
    }
    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.0.transition_job(id, from, to, reason).await
    }
    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.0.renew_lease(attempt, holder, now, lease_until).await
    }
    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>, StoreError> {
        self.0.expired_attempts(now).await
    }
    async fn running_attempts(&self) -> Result<Vec<Attempt>, StoreError> {
        self.0.running_attempts().await
    }
    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>, StoreError> {
        self.0.attempts(job).await
    }
    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>, StoreError> {
        self.0.attempt(id).await
    }
    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>, StoreError> {
        self.0.attempt_by_token(token_hash).await
    }
    async fn use_token(&self, attempt: AttemptId) -> Result<bool, StoreError> {
        self.0.use_token(attempt).await
    }
    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>, StoreError> {
        self.0.steps(attempt).await
    }
    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>, StoreError> {
        self.0.logs(attempt).await
    }
    async fn apply(&self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        self.0.apply(changes).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_methods_conform() {
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = AtomicU32::new(0);
    run_all(|| {
        let path = dir.path().join(format!(
            "one-by-one-{}.db",
            counter.fetch_add(1, Ordering::SeqCst)
        ));
        async move {
            let store = OnlyRequired(SqlStore::open_sqlite(&path).await.expect("sqlite"));
            assert!(
                !store.atomic_apply(),
                "a store is not assumed to apply atomically"
            );
            store
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_integration_store_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqlStore::open_sqlite(&dir.path().join("state.db"))
        .await
        .expect("sqlite");
    solstice_core::testing::integration::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_integration_store_conforms() {
    let url = postgres_url();
    let schema = format!(
        "ti{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let store = SqlStore::connect_in_schema(&url, Some(&schema))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for this test: {e}"));
    solstice_core::testing::integration::run_all(&store).await;
    store.close().await;
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await
        .expect("drop the test schema");
}

//! SQLite and PostgreSQL pass the same store conformance suite.
//!
//! PostgreSQL is the machine's server (127.0.0.1:5432, database `test`), or
//! `SOLSTICE_TEST_POSTGRES`. Under CI (`CI` set) a missing server fails the
//! test; elsewhere too, because a skipped test proves nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use solstice_core::store::SqlStore;
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

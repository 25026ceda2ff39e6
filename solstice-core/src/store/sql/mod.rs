//! [`SqlStore`]: the The [`StateStore`] on SQLite or PostgreSQL.
//!
//! - `mod.rs`: connecting, migrating, the connection, and the reads and
//!   control writes;
//! - `batch.rs`: [`StateStore::apply`], the batched hot path;
//! - `rows.rs`: rows to records;
//! - `text.rs`: placeholders and the SQL fragments of multi-row statements.

mod batch;
mod integration;
mod rows;
mod text;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::store::BoxError;
use crate::store::{
    Applied, Attempt, AttemptId, AttemptStatus, Change, Job, JobId, JobStatus, LogChunk, NewJob,
    Run, RunId, RunStatus, StateStore, StepRecord, StoreError,
};
use rows::{
    ATTEMPT_COLUMNS, JOB_COLUMNS, SqlResult, attempt_from, chunk_from, col, job_from, run_from,
    step_from,
};
use text::{BATCH_ROWS, Dialect, ids_of, placeholders};

type Result<T> = std::result::Result<T, StoreError>;

/// The [`StateStore`] on SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    db: Arc<Handle>,
    dialect: Dialect,
    /// The symlink through which a path that is not UTF-8 is opened.
    _alias: Option<Arc<tempfile::TempDir>>,
}

/// `sqlite://` and the path, percent-encoded but for unreserved characters
/// and `/` (sqlx decodes it).
fn sqlite_url(path: &str) -> String {
    let mut url = String::from("sqlite://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

/// Where statements go.
enum Handle {
    /// SQLite: one connection, owned outright. SQLite has one writer at a
    /// time and a writer that finds the database locked sleeps in
    /// millisecond steps, so one connection that serialises everything is
    /// the fastest; and without a pool, no statement pays the pool's
    /// bookkeeping (which pings a connection every time it is returned).
    /// `None` once closed.
    Single(tokio::sync::Mutex<Option<AnyConnection>>),
    /// PostgreSQL: a pool.
    Pool(AnyPool),
}

/// A connection for one operation.
enum Conn<'a> {
    Single(tokio::sync::MappedMutexGuard<'a, AnyConnection>),
    Pool(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl std::ops::Deref for Conn<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Conn::Single(c) => c,
            Conn::Pool(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Conn::Single(c) => c,
            Conn::Pool(c) => c,
        }
    }
}

/// Run first on every PostgreSQL connection (see `SqlStore::open`).
const QUIET: &str = "SET client_min_messages TO warning";

impl SqlStore {
    /// Connects and migrates: `sqlite:///path/to/state.db` (created when
    /// missing), `sqlite::memory:`, or `postgres://user@host/db`.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        Self::connect_in_schema(url, None).await
    }

    /// Like [`SqlStore::connect`], with every PostgreSQL table in `schema`
    /// (created when missing). Lets tests and tenants share a database.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        if let Some(s) = schema
            && !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Url(format!("invalid schema name {s:?}")));
        }
        Self::open(url, dialect, schema.map(str::to_string))
            .await
            .map_err(StoreError::Setup)
    }

    /// Opens (creating when missing) and migrates the SQLite database at
    /// `path`, whatever its directories are called (`?`, `#`, `%`, spaces,
    /// bytes that are not UTF-8). The file's own name must be UTF-8
    /// ([`StoreError::Url`] otherwise).
    ///
    /// sqlx takes SQLite paths as UTF-8 text in a URL: the path is
    /// percent-encoded, and a directory whose path is not UTF-8 is reached
    /// through a symlink with a UTF-8 name in a private temporary
    /// directory that lives as long as the store.
    pub async fn open_sqlite(path: &std::path::Path) -> Result<SqlStore> {
        if let Some(text) = path.to_str() {
            return Self::connect(&sqlite_url(text)).await;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StoreError::Url(format!("the file name of {path:?} is not UTF-8")))?;
        let dir = std::path::absolute(path.parent().unwrap_or(std::path::Path::new(".")))
            .map_err(|e| StoreError::Setup(Box::new(e)))?;
        let alias = tempfile::Builder::new()
            .prefix("solstice-sqlite-")
            .tempdir()
            .map_err(|e| StoreError::Setup(Box::new(e)))?;
        let link = alias.path().join("db");
        std::os::unix::fs::symlink(&dir, &link).map_err(|e| StoreError::Setup(Box::new(e)))?;
        let text = link
            .join(name)
            .to_str()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Url("the temporary directory is not UTF-8".into()))?;
        let mut store = Self::connect(&sqlite_url(&text)).await?;
        store._alias = Some(Arc::new(alias));
        Ok(store)
    }

    /// PostgreSQL's notices below warnings (`relation "_sqlx_migrations"
    /// already exists, skipping` on every start, `IF NOT EXISTS` in
    /// general) are not the embedder's business: a session hears warnings
    /// and errors only.
    async fn open(
        url: &str,
        dialect: Dialect,
        schema: Option<String>,
    ) -> std::result::Result<SqlStore, BoxError> {
        let url =
            if dialect == Dialect::Sqlite && !url.contains(":memory:") && !url.contains("mode=") {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            } else {
                url.to_string()
            };
        if let (Dialect::Postgres, Some(s)) = (dialect, &schema) {
            let setup = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await?;
            setup.execute(QUIET).await?;
            setup
                .execute(format!("CREATE SCHEMA IF NOT EXISTS {s}").as_str())
                .await?;
            setup.close().await;
        }
        if dialect == Dialect::Sqlite {
            let mut conn = AnyConnection::connect(&url).await?;
            for pragma in [
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 10000",
                "PRAGMA foreign_keys = ON",
            ] {
                conn.execute(pragma).await?;
            }
            sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
            return Ok(SqlStore {
                db: Arc::new(Handle::Single(tokio::sync::Mutex::new(Some(conn)))),
                dialect,
                _alias: None,
            });
        }
        let pool = AnyPoolOptions::new()
            // A connection is checked on every acquire by default: a second
            // round trip to the database per statement. A broken connection
            // shows up as an error on the statement instead.
            .test_before_acquire(false)
            .max_connections(16)
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    conn.execute(QUIET).await?;
                    if let Some(s) = schema {
                        conn.execute(format!("SET search_path TO {s}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(SqlStore {
            db: Arc::new(Handle::Pool(pool)),
            dialect,
            _alias: None,
        })
    }

    async fn conn(&self) -> Result<Conn<'_>> {
        Ok(match &*self.db {
            Handle::Single(c) => Conn::Single(
                tokio::sync::MutexGuard::try_map(c.lock().await, Option::as_mut)
                    .map_err(|_| StoreError::Closed)?,
            ),
            Handle::Pool(p) => Conn::Pool(p.acquire().await.db()?),
        })
    }

    /// The rows of `sql` (one parameter, `$1`, bound to `id`), mapped.
    async fn all_by_id<T>(
        &self,
        sql: String,
        id: i64,
        map: fn(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let sql = self.dialect.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(id)
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(map).collect()
    }

    /// The row of `sql` (one parameter, `$1`, bound to `id`), if any, mapped.
    async fn one_by_id<T>(
        &self,
        sql: String,
        id: i64,
        map: fn(&AnyRow) -> Result<T>,
    ) -> Result<Option<T>> {
        let sql = self.dialect.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.conn().await.db()?)
            .await
            .db()?;
        row.as_ref().map(map).transpose()
    }

    /// Closes the connections. Operations after this fail.
    pub async fn close(&self) {
        match &*self.db {
            Handle::Single(c) => {
                if let Some(conn) = c.lock().await.take() {
                    let _ = conn.close().await;
                }
            }
            Handle::Pool(p) => p.close().await,
        }
    }
}

#[async_trait]
impl StateStore for SqlStore {
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId> {
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        let row = sqlx::query(&self.dialect.sql(
            "INSERT INTO runs (name, source, status, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        ))
        .bind(name)
        .bind(source)
        .bind(RunStatus::Running.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await.db()?;
        let run = RunId::new(col(&row, "id")?);
        let positioned: Vec<(usize, &NewJob)> = jobs.iter().enumerate().collect();
        for rows in positioned.chunks(BATCH_ROWS) {
            let sql = self.dialect.sequential_sql(format!(
                "INSERT INTO jobs (run_id, position, job_key, label, spec, needs, status, max_attempts) VALUES {}",
                placeholders(rows.len(), 8, 1)
            ));
            let mut q = sqlx::query(&sql);
            for (i, job) in rows {
                let needs = serde_json::to_string(&job.needs)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                q = q
                    .bind(run.get())
                    .bind(*i as i64)
                    .bind(job.key.as_str())
                    .bind(job.label.as_str())
                    .bind(job.spec.as_str())
                    .bind(needs)
                    .bind(JobStatus::Pending.as_str())
                    .bind(i64::from(job.max_attempts.max(1)));
            }
            q.execute(&mut *tx).await.db()?;
        }
        tx.commit().await.db()?;
        Ok(run)
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        let sql =
            "SELECT id, name, source, status, created_at, finished_at FROM runs WHERE id = $1";
        self.one_by_id(sql.into(), id.get(), run_from).await
    }

    async fn running_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&self.dialect.sql(
            "SELECT id, name, source, status, created_at, finished_at FROM runs WHERE status = $1 ORDER BY id",
        ))
        .bind(RunStatus::Running.as_str())
        .fetch_all(&mut *self.conn().await.db()?)
        .await.db()?;
        rows.iter().map(run_from).collect()
    }

    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()> {
        let mut conn = self.conn().await.db()?;
        sqlx::query(
            &self
                .dialect
                .sql("UPDATE runs SET status = $1, finished_at = $2 WHERE id = $3"),
        )
        .bind(status.as_str())
        .bind(now)
        .bind(id.get())
        .execute(&mut *conn)
        .await
        .db()?;
        // The status outbox keeps what nobody sent for a retention only
        // (a store without an integration layer has nobody to send it).
        sqlx::query(&self.dialect.sql("DELETE FROM status_outbox WHERE at < $1"))
            .bind(now.saturating_sub(crate::store::STATUS_RETENTION_MS))
            .execute(&mut *conn)
            .await
            .db()?;
        Ok(())
    }

    async fn jobs(&self, run: RunId) -> Result<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 ORDER BY position");
        self.all_by_id(sql, run.get(), job_from).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        self.one_by_id(sql, id.get(), job_from).await
    }

    async fn job_by_key(&self, run: RunId, key: &str) -> Result<Option<Job>> {
        let sql = self.dialect.dialect_sql(format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 AND job_key = $2"
        ));
        let row = sqlx::query(&sql)
            .bind(run.get())
            .bind(key)
            .fetch_optional(&mut *self.conn().await.db()?)
            .await
            .db()?;
        row.as_ref().map(job_from).transpose()
    }

    async fn jobs_in_status(&self, run: RunId, status: JobStatus) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 AND status = $2 ORDER BY position"
        );
        let sql = self.dialect.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(run.get())
            .bind(status.as_str())
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(job_from).collect()
    }

    async fn queued_jobs(&self) -> Result<Vec<Job>> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = $1 ORDER BY run_id, position");
        let rows = sqlx::query(&self.dialect.dialect_sql(sql))
            .bind(JobStatus::Queued.as_str())
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(job_from).collect()
    }

    async fn has_unfinished_jobs(&self, run: RunId) -> Result<bool> {
        let row = sqlx::query(&self.dialect.sql(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM jobs WHERE run_id = $1 AND status IN ($2, $3, $4) LIMIT 1) AS any_left",
        ))
        .bind(run.get())
        .bind(JobStatus::Pending.as_str())
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Running.as_str())
        .fetch_one(&mut *self.conn().await.db()?)
        .await.db()?;
        Ok(col::<i64>(&row, "n")? > 0)
    }

    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        // At most 7 statuses: a fixed IN list of placeholders.
        let mut sql =
            String::from("UPDATE jobs SET status = $1, reason = $2 WHERE id = $3 AND status IN (");
        for i in 0..from.len().max(1) {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", i + 4));
        }
        sql.push(')');
        let sql = self.dialect.dialect_sql(sql);
        let mut q = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(reason)
            .bind(id.get());
        if from.is_empty() {
            q = q.bind("");
        }
        for s in from {
            q = q.bind(s.as_str());
        }
        Ok(q.execute(&mut *self.conn().await.db()?)
            .await
            .db()?
            .rows_affected()
            == 1)
    }

    async fn transition_jobs(
        &self,
        ids: &[JobId],
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<Vec<JobId>> {
        let mut moved = Vec::new();
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        for chunk in ids.chunks(BATCH_ROWS) {
            let from_list = ids_of(from.len().max(1), 1, 3);
            let sql = self.dialect.sequential_sql(format!(
                "UPDATE jobs SET status = $1, reason = $2 WHERE status IN ({from_list}) AND id IN ({}) RETURNING id",
                ids_of(chunk.len(), 1, 3 + from.len().max(1))
            ));
            let mut q = sqlx::query(&sql).bind(to.as_str()).bind(reason);
            if from.is_empty() {
                q = q.bind("");
            }
            for s in from {
                q = q.bind(s.as_str());
            }
            for id in chunk {
                q = q.bind(id.get());
            }
            for row in q.fetch_all(&mut *tx).await.db()? {
                moved.push(JobId::new(col(&row, "id")?));
            }
        }
        tx.commit().await.db()?;
        let order: HashMap<JobId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        moved.sort_by_key(|id| order.get(id).copied());
        Ok(moved)
    }

    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool> {
        let n = sqlx::query(&self.dialect.sql(
            "UPDATE attempts SET lease_expires_at = $1 \
             WHERE id = $2 AND holder = $3 AND status = $4 AND lease_expires_at >= $5",
        ))
        .bind(lease_until)
        .bind(attempt.get())
        .bind(holder)
        .bind(AttemptStatus::Running.as_str())
        .bind(now)
        .execute(&mut *self.conn().await.db()?)
        .await
        .db()?
        .rows_affected();
        Ok(n == 1)
    }

    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE status = $1 AND lease_expires_at < $2 ORDER BY id"
        );
        let sql = self.dialect.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(AttemptStatus::Running.as_str())
            .bind(now)
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(attempt_from).collect()
    }

    async fn running_attempts(&self) -> Result<Vec<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE status = $1 ORDER BY id");
        let sql = self.dialect.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(AttemptStatus::Running.as_str())
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(attempt_from).collect()
    }

    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>> {
        let sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = $1 ORDER BY number");
        self.all_by_id(sql, job.get(), attempt_from).await
    }

    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = $1");
        self.one_by_id(sql, id.get(), attempt_from).await
    }

    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE token_hash = $1");
        let sql = self.dialect.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(&mut *self.conn().await.db()?)
            .await
            .db()?;
        row.as_ref().map(attempt_from).transpose()
    }

    async fn use_token(&self, attempt: AttemptId) -> Result<bool> {
        let n = sqlx::query(
            &self
                .dialect
                .sql("UPDATE attempts SET token_used = 1 WHERE id = $1 AND token_used = 0"),
        )
        .bind(attempt.get())
        .execute(&mut *self.conn().await.db()?)
        .await
        .db()?
        .rows_affected();
        Ok(n == 1)
    }

    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>> {
        let sql = "SELECT attempt_id, idx, name, status, exit_code, started_at, finished_at \
                   FROM steps WHERE attempt_id = $1 ORDER BY idx";
        self.all_by_id(sql.into(), attempt.get(), step_from).await
    }

    fn atomic_apply(&self) -> bool {
        true // one transaction
    }

    async fn apply(&self, changes: &[Change]) -> Result<Vec<Applied>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction, a handful of multi-row statements, in an order
        // that respects what a batch can contain: an attempt's steps and
        // logs before its end (an attempt claimed in this batch has no
        // other writes in it: they need its id). The guards come first:
        // they lock the attempts they check.
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        let (writes, refused) = self.apply_guards(&mut tx, changes).await?;
        let mut out: Vec<Applied> = writes
            .iter()
            .zip(&refused)
            .map(|(w, refused)| match w {
                _ if *refused => Applied::Fenced,
                Change::Claim { .. } => Applied::Claimed(None),
                Change::Finish { .. } => Applied::Finished(false),
                _ => Applied::Done,
            })
            .collect();
        self.apply_claims(&mut tx, &writes, &mut out).await.db()?;
        self.apply_vms(&mut tx, &writes).await.db()?;
        self.apply_steps(&mut tx, &writes).await.db()?;
        self.apply_logs(&mut tx, &writes).await.db()?;
        self.apply_finishes(&mut tx, &writes, &mut out).await.db()?;
        tx.commit().await.db()?;
        Ok(out)
    }

    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>> {
        let sql = "SELECT attempt_id, seq, step, stream, data, at FROM log_chunks \
                   WHERE attempt_id = $1 ORDER BY seq";
        self.all_by_id(sql.into(), attempt.get(), chunk_from).await
    }

    async fn log_tail(&self, attempt: AttemptId, bytes: usize) -> Result<Vec<LogChunk>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        // The bytes of each chunk and of those after it, from the lengths
        // alone: only the chunks returned are read (a 64 MiB log's page
        // reads its last 2 MiB).
        let sql = self.dialect.dialect_sql(
            "SELECT attempt_id, seq, step, stream, data, at FROM log_chunks \
             WHERE attempt_id = $1 AND seq >= COALESCE((\
                 SELECT MIN(seq) FROM (\
                     SELECT seq, SUM(LENGTH(data)) OVER (ORDER BY seq DESC) - LENGTH(data) AS after \
                     FROM log_chunks WHERE attempt_id = $1) t \
                 WHERE after < $2), -1) \
             ORDER BY seq"
                .into(),
        );
        let rows = sqlx::query(&sql)
            .bind(attempt.get())
            .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(chunk_from).collect()
    }
}

//! The state store: runs, jobs, attempts, steps and log chunks, and the
//! leases that tell a live attempt from an abandoned one.
//!
//! [`StateStore`] is the trait; [`SqlStore`] implements it for SQLite (the
//! embedded default) and PostgreSQL (many hosts) with the same SQL through
//! sqlx's `Any` driver, with one migration set per dialect in
//! `migrations/`. Both pass the same conformance suite
//! (`solstice_core::testing::store`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

/// Row ids.
pub type RunId = i64;
/// Row ids.
pub type JobId = i64;
/// Row ids.
pub type AttemptId = i64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed or refused.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row is not in the state the operation needs (e.g. claiming a job
    /// that someone else claimed first).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error("unsupported database URL: {0}")]
    Url(String),
    /// The store was closed, or the writer in front of it stopped.
    #[error("the state store is closed")]
    Closed,
    /// A batch of writes ([`StateStore::apply`]) that this write was part
    /// of failed.
    #[error("a batch of writes failed: {0}")]
    Batch(String),
}

type Result<T> = std::result::Result<T, StoreError>;

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Corrupt(format!("{} `{other}`", stringify!($name)))),
                }
            }
        }
    };
}

status_enum!(
    /// Where a run is.
    RunStatus {
        /// Jobs are waiting or running.
        Running => "running",
        /// Every job succeeded.
        Succeeded => "succeeded",
        /// A job failed (or was skipped because of one).
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
    }
);

status_enum!(
    /// Where a job is.
    JobStatus {
        /// Waiting for its `needs`.
        Pending => "pending",
        /// Published to the queue.
        Queued => "queued",
        /// An attempt holds it.
        Running => "running",
        /// Done, every step passed (or was allowed to fail).
        Succeeded => "succeeded",
        /// Done, a step failed, or attempts ran out.
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
        /// Not run because something it needs did not succeed.
        Skipped => "skipped",
    }
);

impl JobStatus {
    /// True once the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Skipped
        )
    }
}

status_enum!(
    /// Where an attempt is.
    AttemptStatus {
        /// Holds a lease.
        Running => "running",
        /// The job passed.
        Succeeded => "succeeded",
        /// A step failed, or the job timed out.
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
        /// Infrastructure failure: VM did not boot, runner lost, engine died.
        Lost => "lost",
    }
);

status_enum!(
    /// Where a step is.
    StepStatus {
        /// Started, not finished.
        Running => "running",
        /// Exit status 0.
        Succeeded => "succeeded",
        /// Non-zero exit, or could not start.
        Failed => "failed",
        /// Killed by its timeout.
        TimedOut => "timed_out",
    }
);

/// A run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Id.
    pub id: RunId,
    /// The workflow's name.
    pub name: String,
    /// Where it came from (JSON: repository, commit, event), opaque to the store.
    pub source: String,
    /// Status.
    pub status: RunStatus,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub finished_at: Option<i64>,
}

/// A job to insert with its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Expanded id, unique in the run (`test (rust=stable)`).
    pub key: String,
    /// Runner label.
    pub label: String,
    /// The planned job as JSON, opaque to the store.
    pub spec: String,
    /// Keys of the jobs it needs.
    pub needs: Vec<String>,
    /// 1 + `retry`.
    pub max_attempts: u32,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// Its run.
    pub run_id: RunId,
    /// Position in the workflow (file order).
    pub position: i64,
    /// Expanded id.
    pub key: String,
    /// Runner label.
    pub label: String,
    /// Planned job (JSON).
    pub spec: String,
    /// Keys it needs.
    pub needs: Vec<String>,
    /// Status.
    pub status: JobStatus,
    /// Why it is in that status (skipped because ..., failed because ...).
    pub reason: Option<String>,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempts made.
    pub attempts: u32,
}

/// One attempt at a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// Id.
    pub id: AttemptId,
    /// Its job.
    pub job_id: JobId,
    /// 1, 2, ...
    pub number: u32,
    /// Status.
    pub status: AttemptStatus,
    /// Why it ended that way.
    pub reason: Option<String>,
    /// The engine instance holding the lease.
    pub holder: String,
    /// Unix ms; past this, the attempt is abandoned.
    pub lease_expires_at: i64,
    /// The VM that runs it.
    pub vm_id: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub finished_at: Option<i64>,
}

/// A step of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Its attempt.
    pub attempt_id: AttemptId,
    /// 0-based index in the job.
    pub index: u32,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: StepStatus,
    /// Exit status, when it ran.
    pub exit_code: Option<i32>,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
}

/// A piece of an attempt's log (already masked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogChunk {
    /// Its attempt.
    pub attempt_id: AttemptId,
    /// Order within the attempt, from 0.
    pub seq: i64,
    /// Step index (or `u32::MAX` for system lines).
    pub step: u32,
    /// 0 stdout, 1 stderr, 2 system.
    pub stream: u8,
    /// Bytes, not necessarily UTF-8.
    pub data: Vec<u8>,
    /// Unix ms.
    pub at: i64,
}

/// One change in a batch for [`StateStore::apply`]: the writes of the
/// engine's hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Write {
    /// [`StateStore::claim`]; the result carries the job as well.
    Claim {
        /// The job.
        job: JobId,
        /// Lease holder.
        holder: String,
        /// Lease end (Unix ms).
        lease_until: i64,
        /// Hash of the attempt's token.
        token_hash: String,
        /// Unix ms.
        now: i64,
    },
    /// [`StateStore::set_vm`].
    SetVm {
        /// The attempt.
        attempt: AttemptId,
        /// Its VM.
        vm_id: String,
    },
    /// [`StateStore::put_step`].
    Step(StepRecord),
    /// [`StateStore::append_logs`].
    Logs(Vec<LogChunk>),
    /// [`StateStore::finish_attempt`] and, only if the attempt was still
    /// running, the job's move from `running` to `job_status`.
    Finish {
        /// The attempt.
        attempt: AttemptId,
        /// Its final status.
        status: AttemptStatus,
        /// Why, for the attempt.
        reason: Option<String>,
        /// Unix ms.
        now: i64,
        /// The attempt's job.
        job: JobId,
        /// The job's next status (`queued` again for a retry).
        job_status: JobStatus,
        /// Why, for the job.
        job_reason: Option<String>,
        /// Attempts added to the job's allowance in the same write (1 when
        /// the attempt was lost through no fault of the job: its engine
        /// died), so that "lost and queued again" is one atomic change.
        extra_attempts: u32,
    },
}

/// What one [`Write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A claim: the job as claimed and its new attempt, or `None` if the
    /// job was not queued or had no attempts left (or an earlier claim in
    /// the same batch took it).
    Claimed(Option<Box<(Job, Attempt)>>),
    /// A finish: `true` if the attempt was running and is now ended.
    Finished(bool),
    /// Any other write.
    Done,
}

/// What the engine records. Every method is safe to call from several
/// engines at once: state changes are compare-and-set, so a race has one
/// winner and the others get `false` or [`StoreError::Conflict`].
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Inserts a run and all its jobs (status `pending`) atomically.
    async fn create_run(
        &self,
        name: &str,
        source: &str,
        jobs: &[NewJob],
        now: i64,
    ) -> Result<RunId>;
    /// A run.
    async fn run(&self, id: RunId) -> Result<Option<Run>>;
    /// Every run not yet final, oldest first.
    async fn running_runs(&self) -> Result<Vec<Run>>;
    /// True if [`StateStore::apply`] applies all of a batch or none of it.
    /// Only then may a failed batch be applied again one write at a time
    /// (so one bad write fails only itself); otherwise every write of a
    /// failed batch fails.
    fn atomic_apply(&self) -> bool {
        false
    }
    /// Sets a run's final status.
    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()>;
    /// A run's jobs in workflow order.
    async fn jobs(&self, run: RunId) -> Result<Vec<Job>>;
    /// A job.
    async fn job(&self, id: JobId) -> Result<Option<Job>>;
    /// A run's jobs in one status, in workflow order.
    async fn jobs_in_status(&self, run: RunId, status: JobStatus) -> Result<Vec<Job>>;
    /// 0 when every job of the run is final, else 1 (cheap: stops at the first).
    async fn unfinished_jobs(&self, run: RunId) -> Result<u64>;
    /// Every `queued` job of every run, oldest run first: what the queue
    /// should hold a message for (engines reconcile the two).
    async fn queued_jobs(&self) -> Result<Vec<Job>>;
    /// Moves a job to `to` if its status is one of `from`; `false` if not.
    async fn transition_job(
        &self,
        id: JobId,
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<bool>;
    /// [`StateStore::transition_job`] for many jobs at once (one
    /// compare-and-set per job); returns the ids of the jobs that moved.
    async fn transition_jobs(
        &self,
        ids: &[JobId],
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<Vec<JobId>> {
        let mut moved = Vec::new();
        for &id in ids {
            if self.transition_job(id, from, to, reason).await? {
                moved.push(id);
            }
        }
        Ok(moved)
    }
    /// Allows `n` more attempts (an attempt lost to the engine itself does
    /// not count against the workflow's `retry`).
    async fn add_attempts(&self, job: JobId, n: u32) -> Result<()>;
    /// Claims a `queued` job: creates its next attempt (running, leased to
    /// `holder` until `lease_until`, with the hash of its token) and marks
    /// the job running. [`StoreError::Conflict`] if the job is not queued
    /// or has no attempts left.
    async fn claim(
        &self,
        job: JobId,
        holder: &str,
        lease_until: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Attempt>;
    /// Extends a running attempt's lease; `false` if it is not running or
    /// not held by `holder`.
    async fn renew_lease(&self, attempt: AttemptId, holder: &str, lease_until: i64)
    -> Result<bool>;
    /// Records which VM runs an attempt.
    async fn set_vm(&self, attempt: AttemptId, vm_id: &str) -> Result<()>;
    /// Ends a running attempt; `false` if it was not running.
    async fn finish_attempt(
        &self,
        attempt: AttemptId,
        status: AttemptStatus,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool>;
    /// Running attempts whose lease expired before `now`.
    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>>;
    /// Running attempts (for reaping VMs no live job owns).
    async fn running_attempts(&self) -> Result<Vec<Attempt>>;
    /// A job's attempts, oldest first.
    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>>;
    /// An attempt.
    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>>;
    /// The attempt a token (by hash) belongs to.
    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>>;
    /// Marks the token used; `true` only the first time (tokens are single-use).
    async fn use_token(&self, attempt: AttemptId) -> Result<bool>;
    /// Inserts or updates a step.
    async fn put_step(&self, step: &StepRecord) -> Result<()>;
    /// An attempt's steps in order.
    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>>;
    /// Appends log chunks (one transaction).
    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()>;
    /// An attempt's log in order.
    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>>;

    /// Applies many writes, in order, with one result per write: the
    /// engine's group commit. An implementation should apply them in one
    /// transaction with a few statements. This default makes one call per
    /// write: correct, not fast, and not atomic (an error can leave the
    /// writes before it applied), so it keeps [`StateStore::atomic_apply`]
    /// false.
    async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            out.push(match w {
                Write::Claim {
                    job,
                    holder,
                    lease_until,
                    token_hash,
                    now,
                } => match self
                    .claim(*job, holder, *lease_until, token_hash, *now)
                    .await
                {
                    Ok(attempt) => {
                        let job = self.job(*job).await?.ok_or_else(|| {
                            StoreError::Corrupt(format!("claimed job {job} is gone"))
                        })?;
                        Applied::Claimed(Some(Box::new((job, attempt))))
                    }
                    Err(StoreError::Conflict(_)) => Applied::Claimed(None),
                    Err(e) => return Err(e),
                },
                Write::SetVm { attempt, vm_id } => {
                    self.set_vm(*attempt, vm_id).await?;
                    Applied::Done
                }
                Write::Step(step) => {
                    self.put_step(step).await?;
                    Applied::Done
                }
                Write::Logs(chunks) => {
                    self.append_logs(chunks).await?;
                    Applied::Done
                }
                Write::Finish {
                    attempt,
                    status,
                    reason,
                    now,
                    job,
                    job_status,
                    job_reason,
                    extra_attempts,
                } => {
                    let ended = self
                        .finish_attempt(*attempt, *status, reason.as_deref(), *now)
                        .await?;
                    if ended {
                        if *extra_attempts > 0 {
                            self.add_attempts(*job, *extra_attempts).await?;
                        }
                        self.transition_job(
                            *job,
                            &[JobStatus::Running],
                            *job_status,
                            job_reason.as_deref(),
                        )
                        .await?;
                    }
                    Applied::Finished(ended)
                }
            });
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// [`StateStore`] on SQLite or PostgreSQL.
#[derive(Clone)]
pub struct SqlStore {
    db: Arc<Db>,
    dialect: Dialect,
}

/// Where statements go.
enum Db {
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

fn col<T>(row: &AnyRow, name: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).map_err(StoreError::Database)
}

fn to_u32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

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
        let url =
            if dialect == Dialect::Sqlite && !url.contains(":memory:") && !url.contains("mode=") {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            } else {
                url.to_string()
            };
        let schema = schema.map(str::to_string);
        if let (Dialect::Postgres, Some(s)) = (dialect, &schema) {
            let setup = AnyPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await?;
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
                db: Arc::new(Db::Single(tokio::sync::Mutex::new(Some(conn)))),
                dialect,
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
            db: Arc::new(Db::Pool(pool)),
            dialect,
        })
    }

    async fn conn(&self) -> Result<Conn<'_>> {
        Ok(match &*self.db {
            Db::Single(c) => Conn::Single(
                tokio::sync::MutexGuard::try_map(c.lock().await, Option::as_mut)
                    .map_err(|_| StoreError::Closed)?,
            ),
            Db::Pool(p) => Conn::Pool(p.acquire().await?),
        })
    }

    /// SQL is written with `$1` placeholders; SQLite numbers them `?1`.
    fn sql(&self, text: &'static str) -> std::borrow::Cow<'static, str> {
        match self.dialect {
            Dialect::Postgres => text.into(),
            Dialect::Sqlite => text.replace('$', "?").into(),
        }
    }

    /// [`SqlStore::sql`] for SQL built at run time.
    fn dialect_sql(&self, text: String) -> String {
        match self.dialect {
            Dialect::Postgres => text,
            Dialect::Sqlite => text.replace('$', "?"),
        }
    }

    /// [`SqlStore::dialect_sql`] for SQL whose parameters appear in order,
    /// each once (`$1 ... $N`): SQLite gets anonymous `?`s. sqlx looks up
    /// the name of every numbered SQLite parameter, and SQLite finds a name
    /// by a linear search, so a multi-row statement with N numbered
    /// parameters costs N² steps to bind; anonymous ones cost N.
    fn sequential_sql(&self, text: String) -> String {
        if self.dialect == Dialect::Postgres {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        let mut expected = 1u64;
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                let mut n = 0u64;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + u64::from(d);
                    chars.next();
                }
                debug_assert_eq!(n, expected, "parameters out of order in {text}");
                expected += 1;
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Closes the connections. Operations after this fail.
    pub async fn close(&self) {
        match &*self.db {
            Db::Single(c) => {
                if let Some(conn) = c.lock().await.take() {
                    let _ = conn.close().await;
                }
            }
            Db::Pool(p) => p.close().await,
        }
    }
}

fn run_from(r: &sqlx::any::AnyRow) -> Result<Run> {
    Ok(Run {
        id: col(r, "id")?,
        name: col(r, "name")?,
        source: col(r, "source")?,
        status: col::<String>(r, "status")?.parse()?,
        created_at: col(r, "created_at")?,
        finished_at: col(r, "finished_at")?,
    })
}

fn job_from(row: &AnyRow) -> Result<Job> {
    let needs: String = col(row, "needs")?;
    Ok(Job {
        id: col(row, "id")?,
        run_id: col(row, "run_id")?,
        position: col(row, "position")?,
        key: col(row, "job_key")?,
        label: col(row, "label")?,
        spec: col(row, "spec")?,
        needs: serde_json::from_str(&needs)
            .map_err(|e| StoreError::Corrupt(format!("needs: {e}")))?,
        status: col::<String>(row, "status")?.parse()?,
        reason: col(row, "reason")?,
        max_attempts: to_u32(col(row, "max_attempts")?, "max_attempts")?,
        attempts: to_u32(col(row, "attempts")?, "attempts")?,
    })
}

fn attempt_from(row: &AnyRow) -> Result<Attempt> {
    Ok(Attempt {
        id: col(row, "id")?,
        job_id: col(row, "job_id")?,
        number: to_u32(col(row, "number")?, "number")?,
        status: col::<String>(row, "status")?.parse()?,
        reason: col(row, "reason")?,
        holder: col(row, "holder")?,
        lease_expires_at: col(row, "lease_expires_at")?,
        vm_id: col(row, "vm_id")?,
        started_at: col(row, "started_at")?,
        finished_at: col(row, "finished_at")?,
    })
}

/// Rows per multi-row statement: far below every database's limit on bind
/// parameters (SQLite 32,766, PostgreSQL 65,535).
const BATCH_ROWS: usize = 200;

/// Bytes of log data per statement.
const BATCH_LOG_BYTES: usize = 4 << 20;

/// `($first, $first+1, ...), (...)`: `rows` tuples of `cols` placeholders.
fn placeholders(rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + r * cols + c));
        }
        out.push(')');
    }
    out
}

/// `CASE id WHEN $k THEN $k+col ... END` over rows of `width` parameters
/// starting at `first`, where each row's first parameter is the id.
fn case_by_id(rows: usize, width: usize, first: usize, col: usize) -> String {
    let mut out = String::from("CASE id");
    for r in 0..rows {
        let base = first + r * width;
        out.push_str(&format!(" WHEN ${base} THEN ${}", base + col));
    }
    out.push_str(" END");
    out
}

/// `$k, $k+width, ...`: the ids of rows of `width` parameters.
fn ids_of(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| format!("${}", first + r * width))
        .collect::<Vec<_>>()
        .join(", ")
}

const ATTEMPT_COLUMNS: &str =
    "id, job_id, number, status, reason, holder, lease_expires_at, vm_id, started_at, finished_at";
const JOB_COLUMNS: &str =
    "id, run_id, position, job_key, label, spec, needs, status, reason, max_attempts, attempts";

impl SqlStore {
    async fn apply_claims(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[Write],
        out: &mut [Applied],
    ) -> Result<()> {
        // The first claim of a job in the batch is the one that can win.
        let mut first: HashMap<JobId, usize> = HashMap::new();
        let mut order: Vec<JobId> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if let Write::Claim { job, .. } = w
                && !first.contains_key(job)
            {
                first.insert(*job, i);
                order.push(*job);
            }
        }
        for ids in order.chunks(BATCH_ROWS) {
            let sql = self.sequential_sql(format!(
                "UPDATE jobs SET status = $1, attempts = attempts + 1 \
                 WHERE status = $2 AND attempts < max_attempts AND id IN ({}) RETURNING {JOB_COLUMNS}",
                ids_of(ids.len(), 1, 3)
            ));
            let mut q = sqlx::query(&sql)
                .bind(JobStatus::Running.as_str())
                .bind(JobStatus::Queued.as_str());
            for id in ids {
                q = q.bind(*id);
            }
            let claimed: Vec<Job> = q
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(job_from)
                .collect::<Result<_>>()?;
            if claimed.is_empty() {
                continue;
            }
            let sql = self.sequential_sql(format!(
                "INSERT INTO attempts (job_id, number, status, holder, lease_expires_at, token_hash, started_at) \
                 VALUES {} RETURNING {ATTEMPT_COLUMNS}",
                placeholders(claimed.len(), 7, 1)
            ));
            let mut q = sqlx::query(&sql);
            for job in &claimed {
                let Write::Claim {
                    holder,
                    lease_until,
                    token_hash,
                    now,
                    ..
                } = &writes[first[&job.id]]
                else {
                    unreachable!("indexes point at claims");
                };
                q = q
                    .bind(job.id)
                    .bind(i64::from(job.attempts))
                    .bind(AttemptStatus::Running.as_str())
                    .bind(holder.as_str())
                    .bind(*lease_until)
                    .bind(token_hash.as_str())
                    .bind(*now);
            }
            let mut attempts: HashMap<JobId, Attempt> = HashMap::new();
            for row in q.fetch_all(&mut *conn).await? {
                let a = attempt_from(&row)?;
                attempts.insert(a.job_id, a);
            }
            for job in claimed {
                let attempt = attempts.remove(&job.id).ok_or_else(|| {
                    StoreError::Corrupt(format!("no attempt inserted for job {}", job.id))
                })?;
                let i = first[&job.id];
                out[i] = Applied::Claimed(Some(Box::new((job, attempt))));
            }
        }
        Ok(())
    }

    async fn apply_vms(&self, conn: &mut sqlx::AnyConnection, writes: &[Write]) -> Result<()> {
        // The last write for an attempt wins, as if applied one by one.
        let mut vms: Vec<(AttemptId, &str)> = Vec::new();
        for w in writes {
            if let Write::SetVm { attempt, vm_id } = w {
                vms.retain(|(a, _)| a != attempt);
                vms.push((*attempt, vm_id));
            }
        }
        for rows in vms.chunks(BATCH_ROWS) {
            let sql = self.dialect_sql(format!(
                "UPDATE attempts SET vm_id = {} WHERE id IN ({})",
                case_by_id(rows.len(), 2, 1, 1),
                ids_of(rows.len(), 2, 1)
            ));
            let mut q = sqlx::query(&sql);
            for (attempt, vm) in rows {
                q = q.bind(*attempt).bind(*vm);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn apply_steps(&self, conn: &mut sqlx::AnyConnection, writes: &[Write]) -> Result<()> {
        // One row per step: a step that started and ended within the batch
        // is written once, as if the two writes were applied in order.
        let mut steps: Vec<StepRecord> = Vec::new();
        let mut at: HashMap<(AttemptId, u32), usize> = HashMap::new();
        for w in writes {
            if let Write::Step(step) = w {
                match at.get(&(step.attempt_id, step.index)) {
                    Some(&i) => {
                        let started_at = steps[i].started_at.or(step.started_at);
                        steps[i] = StepRecord {
                            started_at,
                            ..step.clone()
                        };
                    }
                    None => {
                        at.insert((step.attempt_id, step.index), steps.len());
                        steps.push(step.clone());
                    }
                }
            }
        }
        for rows in steps.chunks(BATCH_ROWS) {
            let sql = self.sequential_sql(format!(
                "INSERT INTO steps (attempt_id, idx, name, status, exit_code, started_at, finished_at) \
                 VALUES {} ON CONFLICT (attempt_id, idx) DO UPDATE SET name = excluded.name, \
                 status = excluded.status, exit_code = excluded.exit_code, \
                 started_at = COALESCE(steps.started_at, excluded.started_at), finished_at = excluded.finished_at",
                placeholders(rows.len(), 7, 1)
            ));
            let mut q = sqlx::query(&sql);
            for step in rows {
                q = q
                    .bind(step.attempt_id)
                    .bind(i64::from(step.index))
                    .bind(step.name.as_str())
                    .bind(step.status.as_str())
                    .bind(step.exit_code.map(i64::from))
                    .bind(step.started_at)
                    .bind(step.finished_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn apply_logs(&self, conn: &mut sqlx::AnyConnection, writes: &[Write]) -> Result<()> {
        let chunks: Vec<&LogChunk> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Logs(chunks) => Some(chunks.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        let mut rest = chunks.as_slice();
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && n < BATCH_ROWS && (n == 0 || bytes < BATCH_LOG_BYTES) {
                bytes += rest[n].data.len();
                n += 1;
            }
            let (rows, tail) = rest.split_at(n);
            rest = tail;
            let sql = self.sequential_sql(format!(
                "INSERT INTO log_chunks (attempt_id, seq, step, stream, data, at) VALUES {}",
                placeholders(rows.len(), 6, 1)
            ));
            let mut q = sqlx::query(&sql);
            for c in rows {
                q = q
                    .bind(c.attempt_id)
                    .bind(c.seq)
                    .bind(i64::from(c.step))
                    .bind(i64::from(c.stream))
                    .bind(c.data.as_slice())
                    .bind(c.at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn apply_finishes(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[Write],
        out: &mut [Applied],
    ) -> Result<()> {
        // A second finish of the same attempt finds it ended: only the
        // first can succeed.
        let mut first: HashMap<AttemptId, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let Write::Finish { attempt, .. } = w {
                first.entry(*attempt).or_insert(i);
            }
        }
        let mut finishes: Vec<usize> = first.into_values().collect();
        finishes.sort_unstable();
        for batch in finishes.chunks(BATCH_ROWS) {
            let sql = self.dialect_sql(format!(
                "UPDATE attempts SET status = {}, reason = {}, finished_at = {} \
                 WHERE status = $1 AND id IN ({}) RETURNING id",
                case_by_id(batch.len(), 4, 2, 1),
                case_by_id(batch.len(), 4, 2, 2),
                case_by_id(batch.len(), 4, 2, 3),
                ids_of(batch.len(), 4, 2)
            ));
            let mut q = sqlx::query(&sql).bind(AttemptStatus::Running.as_str());
            for &i in batch {
                let Write::Finish {
                    attempt,
                    status,
                    reason,
                    now,
                    ..
                } = &writes[i]
                else {
                    unreachable!("indexes point at finishes");
                };
                q = q
                    .bind(*attempt)
                    .bind(status.as_str())
                    .bind(reason.as_deref())
                    .bind(*now);
            }
            let ended: HashSet<AttemptId> = q
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| col::<i64>(r, "id"))
                .collect::<Result<_>>()?;
            // The jobs of the attempts that ended move on (one move per job).
            let mut jobs: Vec<(JobId, &str, Option<&str>)> = Vec::new();
            let mut extra: Vec<(JobId, u32)> = Vec::new();
            for &i in batch {
                let Write::Finish {
                    attempt,
                    job,
                    job_status,
                    job_reason,
                    extra_attempts,
                    ..
                } = &writes[i]
                else {
                    unreachable!("indexes point at finishes");
                };
                if ended.contains(attempt) {
                    out[i] = Applied::Finished(true);
                    if !jobs.iter().any(|(j, _, _)| j == job) {
                        jobs.push((*job, job_status.as_str(), job_reason.as_deref()));
                        if *extra_attempts > 0 {
                            extra.push((*job, *extra_attempts));
                        }
                    }
                }
            }
            // Rare (an engine died): one statement each, in this transaction.
            for (job, n) in extra {
                sqlx::query(
                    &self.sql("UPDATE jobs SET max_attempts = max_attempts + $1 WHERE id = $2"),
                )
                .bind(i64::from(n))
                .bind(job)
                .execute(&mut *conn)
                .await?;
            }
            if jobs.is_empty() {
                continue;
            }
            let sql = self.dialect_sql(format!(
                "UPDATE jobs SET status = {}, reason = {} WHERE status = $1 AND id IN ({})",
                case_by_id(jobs.len(), 3, 2, 1),
                case_by_id(jobs.len(), 3, 2, 2),
                ids_of(jobs.len(), 3, 2)
            ));
            let mut q = sqlx::query(&sql).bind(JobStatus::Running.as_str());
            for (job, status, reason) in jobs {
                q = q.bind(job).bind(status).bind(reason);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
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
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        let row = sqlx::query(&self.sql(
            "INSERT INTO runs (name, source, status, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        ))
        .bind(name)
        .bind(source)
        .bind(RunStatus::Running.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let run: i64 = col(&row, "id")?;
        let positioned: Vec<(usize, &NewJob)> = jobs.iter().enumerate().collect();
        for rows in positioned.chunks(BATCH_ROWS) {
            let sql = self.sequential_sql(format!(
                "INSERT INTO jobs (run_id, position, job_key, label, spec, needs, status, max_attempts) VALUES {}",
                placeholders(rows.len(), 8, 1)
            ));
            let mut q = sqlx::query(&sql);
            for (i, job) in rows {
                let needs = serde_json::to_string(&job.needs)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                q = q
                    .bind(run)
                    .bind(*i as i64)
                    .bind(job.key.as_str())
                    .bind(job.label.as_str())
                    .bind(job.spec.as_str())
                    .bind(needs)
                    .bind(JobStatus::Pending.as_str())
                    .bind(i64::from(job.max_attempts.max(1)));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(run)
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>> {
        let row = sqlx::query(&self.sql(
            "SELECT id, name, source, status, created_at, finished_at FROM runs WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.as_ref().map(run_from).transpose()
    }

    async fn running_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, name, source, status, created_at, finished_at FROM runs WHERE status = $1 ORDER BY id",
        ))
        .bind(RunStatus::Running.as_str())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(run_from).collect()
    }

    async fn finish_run(&self, id: RunId, status: RunStatus, now: i64) -> Result<()> {
        sqlx::query(&self.sql("UPDATE runs SET status = $1, finished_at = $2 WHERE id = $3"))
            .bind(status.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    async fn jobs(&self, run: RunId) -> Result<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 ORDER BY position");
        let sql = self.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(run)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(job_from).collect()
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let sql = self.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(job_from).transpose()
    }

    async fn jobs_in_status(&self, run: RunId, status: JobStatus) -> Result<Vec<Job>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 AND status = $2 ORDER BY position"
        );
        let sql = self.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(run)
            .bind(status.as_str())
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(job_from).collect()
    }

    async fn queued_jobs(&self) -> Result<Vec<Job>> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = $1 ORDER BY run_id, position");
        let rows = sqlx::query(&self.dialect_sql(sql))
            .bind(JobStatus::Queued.as_str())
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(job_from).collect()
    }

    async fn unfinished_jobs(&self, run: RunId) -> Result<u64> {
        let row = sqlx::query(&self.sql(
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM jobs WHERE run_id = $1 AND status IN ($2, $3, $4) LIMIT 1) AS any_left",
        ))
        .bind(run)
        .bind(JobStatus::Pending.as_str())
        .bind(JobStatus::Queued.as_str())
        .bind(JobStatus::Running.as_str())
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(col::<i64>(&row, "n")?.max(0) as u64)
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
        let sql = self.dialect_sql(sql);
        let mut q = sqlx::query(&sql).bind(to.as_str()).bind(reason).bind(id);
        if from.is_empty() {
            q = q.bind("");
        }
        for s in from {
            q = q.bind(s.as_str());
        }
        Ok(q.execute(&mut *self.conn().await?).await?.rows_affected() == 1)
    }

    async fn transition_jobs(
        &self,
        ids: &[JobId],
        from: &[JobStatus],
        to: JobStatus,
        reason: Option<&str>,
    ) -> Result<Vec<JobId>> {
        let mut moved = Vec::new();
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        for chunk in ids.chunks(BATCH_ROWS) {
            let from_list = ids_of(from.len().max(1), 1, 3);
            let sql = self.sequential_sql(format!(
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
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                moved.push(col::<i64>(&row, "id")?);
            }
        }
        tx.commit().await?;
        let order: HashMap<JobId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        moved.sort_by_key(|id| order.get(id).copied());
        Ok(moved)
    }

    async fn add_attempts(&self, job: JobId, n: u32) -> Result<()> {
        sqlx::query(&self.sql("UPDATE jobs SET max_attempts = max_attempts + $1 WHERE id = $2"))
            .bind(i64::from(n))
            .bind(job)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    async fn claim(
        &self,
        job: JobId,
        holder: &str,
        lease_until: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Attempt> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        // The compare-and-set on the job is the claim: one winner.
        let claimed = sqlx::query(&self.sql(
            "UPDATE jobs SET status = $1, attempts = attempts + 1 \
             WHERE id = $2 AND status = $3 AND attempts < max_attempts",
        ))
        .bind(JobStatus::Running.as_str())
        .bind(job)
        .bind(JobStatus::Queued.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "job {job} is not queued or has no attempts left"
            )));
        }
        let row = sqlx::query(&self.sql("SELECT attempts FROM jobs WHERE id = $1"))
            .bind(job)
            .fetch_one(&mut *tx)
            .await?;
        let number: i64 = col(&row, "attempts")?;
        let sql = format!(
            "INSERT INTO attempts (job_id, number, status, holder, lease_expires_at, token_hash, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ATTEMPT_COLUMNS}"
        );
        let sql = self.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(job)
            .bind(number)
            .bind(AttemptStatus::Running.as_str())
            .bind(holder)
            .bind(lease_until)
            .bind(token_hash)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let attempt = attempt_from(&row)?;
        tx.commit().await?;
        Ok(attempt)
    }

    async fn renew_lease(
        &self,
        attempt: AttemptId,
        holder: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let n = sqlx::query(&self.sql(
            "UPDATE attempts SET lease_expires_at = $1 WHERE id = $2 AND holder = $3 AND status = $4",
        ))
        .bind(lease_until)
        .bind(attempt)
        .bind(holder)
        .bind(AttemptStatus::Running.as_str())
        .execute(&mut *self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn set_vm(&self, attempt: AttemptId, vm_id: &str) -> Result<()> {
        sqlx::query(&self.sql("UPDATE attempts SET vm_id = $1 WHERE id = $2"))
            .bind(vm_id)
            .bind(attempt)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptId,
        status: AttemptStatus,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let n = sqlx::query(&self.sql(
            "UPDATE attempts SET status = $1, reason = $2, finished_at = $3 WHERE id = $4 AND status = $5",
        ))
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .bind(attempt)
        .bind(AttemptStatus::Running.as_str())
        .execute(&mut *self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn expired_attempts(&self, now: i64) -> Result<Vec<Attempt>> {
        let sql = format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE status = $1 AND lease_expires_at < $2 ORDER BY id"
        );
        let sql = self.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(AttemptStatus::Running.as_str())
            .bind(now)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(attempt_from).collect()
    }

    async fn running_attempts(&self) -> Result<Vec<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE status = $1 ORDER BY id");
        let sql = self.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(AttemptStatus::Running.as_str())
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(attempt_from).collect()
    }

    async fn attempts(&self, job: JobId) -> Result<Vec<Attempt>> {
        let sql =
            format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = $1 ORDER BY number");
        let sql = self.dialect_sql(sql);
        let rows = sqlx::query(&sql)
            .bind(job)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        rows.iter().map(attempt_from).collect()
    }

    async fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = $1");
        let sql = self.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(attempt_from).transpose()
    }

    async fn attempt_by_token(&self, token_hash: &str) -> Result<Option<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE token_hash = $1");
        let sql = self.dialect_sql(sql);
        let row = sqlx::query(&sql)
            .bind(token_hash)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.as_ref().map(attempt_from).transpose()
    }

    async fn use_token(&self, attempt: AttemptId) -> Result<bool> {
        let n = sqlx::query(
            &self.sql("UPDATE attempts SET token_used = 1 WHERE id = $1 AND token_used = 0"),
        )
        .bind(attempt)
        .execute(&mut *self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn put_step(&self, step: &StepRecord) -> Result<()> {
        sqlx::query(&self.sql(
            "INSERT INTO steps (attempt_id, idx, name, status, exit_code, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (attempt_id, idx) DO UPDATE SET name = $3, status = $4, exit_code = $5, \
             started_at = COALESCE(steps.started_at, $6), finished_at = $7",
        ))
        .bind(step.attempt_id)
        .bind(i64::from(step.index))
        .bind(&step.name)
        .bind(step.status.as_str())
        .bind(step.exit_code.map(i64::from))
        .bind(step.started_at)
        .bind(step.finished_at)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    async fn steps(&self, attempt: AttemptId) -> Result<Vec<StepRecord>> {
        let rows = sqlx::query(&self.sql(
            "SELECT attempt_id, idx, name, status, exit_code, started_at, finished_at \
             FROM steps WHERE attempt_id = $1 ORDER BY idx",
        ))
        .bind(attempt)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StepRecord {
                    attempt_id: col(r, "attempt_id")?,
                    index: to_u32(col(r, "idx")?, "idx")?,
                    name: col(r, "name")?,
                    status: col::<String>(r, "status")?.parse()?,
                    exit_code: col::<Option<i64>>(r, "exit_code")?.map(|c| c as i32),
                    started_at: col(r, "started_at")?,
                    finished_at: col(r, "finished_at")?,
                })
            })
            .collect()
    }

    async fn append_logs(&self, chunks: &[LogChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let insert = self.sql(
            "INSERT INTO log_chunks (attempt_id, seq, step, stream, data, at) VALUES ($1, $2, $3, $4, $5, $6)",
        );
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        for c in chunks {
            sqlx::query(&insert)
                .bind(c.attempt_id)
                .bind(c.seq)
                .bind(i64::from(c.step))
                .bind(i64::from(c.stream))
                .bind(c.data.as_slice())
                .bind(c.at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn atomic_apply(&self) -> bool {
        true // one transaction
    }

    async fn apply(&self, writes: &[Write]) -> Result<Vec<Applied>> {
        let mut out: Vec<Applied> = writes
            .iter()
            .map(|w| match w {
                Write::Claim { .. } => Applied::Claimed(None),
                Write::Finish { .. } => Applied::Finished(false),
                _ => Applied::Done,
            })
            .collect();
        if writes.is_empty() {
            return Ok(out);
        }
        // One transaction, a handful of multi-row statements, in an order
        // that respects what a batch can contain: an attempt's steps and
        // logs before its end (an attempt claimed in this batch has no
        // other writes in it: they need its id).
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        self.apply_claims(&mut tx, writes, &mut out).await?;
        self.apply_vms(&mut tx, writes).await?;
        self.apply_steps(&mut tx, writes).await?;
        self.apply_logs(&mut tx, writes).await?;
        self.apply_finishes(&mut tx, writes, &mut out).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn logs(&self, attempt: AttemptId) -> Result<Vec<LogChunk>> {
        let rows = sqlx::query(&self.sql(
            "SELECT attempt_id, seq, step, stream, data, at FROM log_chunks WHERE attempt_id = $1 ORDER BY seq",
        ))
        .bind(attempt)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogChunk {
                    attempt_id: col(r, "attempt_id")?,
                    seq: col(r, "seq")?,
                    step: to_u32(col(r, "step")?, "step")?,
                    stream: u8::try_from(col::<i64>(r, "stream")?)
                        .map_err(|_| StoreError::Corrupt("stream".into()))?,
                    data: col(r, "data")?,
                    at: col(r, "at")?,
                })
            })
            .collect()
    }
}

//! Rows to records, and the errors of reading them.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{
    Attempt, AttemptId, Job, JobId, LogChunk, LogStream, Run, RunId, StepRecord, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

/// Turns sqlx's errors into [`StoreError::Backend`] without a public
/// `From<sqlx::Error>` (which would name sqlx in the API).
pub(super) trait SqlResult<T> {
    fn db(self) -> Result<T>;
}

impl<T> SqlResult<T> for std::result::Result<T, sqlx::Error> {
    fn db(self) -> Result<T> {
        self.map_err(|e| {
            if unreachable(&e) {
                StoreError::Unavailable(e.into())
            } else {
                StoreError::backend(e)
            }
        })
    }
}

/// The database could not be reached, or dropped the connection (it
/// restarted): PostgreSQL's connection exceptions (`08...`) and
/// shutdowns (`57P01`-`57P03`), I/O errors, an exhausted or closed pool.
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl<T> SqlResult<T> for Result<T> {
    fn db(self) -> Result<T> {
        self
    }
}

/// The system's lines are kept with this step number.
const SYSTEM_STEP: i64 = u32::MAX as i64;

pub(super) const ATTEMPT_COLUMNS: &str =
    "id, job_id, number, status, reason, holder, lease_expires_at, vm_id, started_at, finished_at";
pub(super) const JOB_COLUMNS: &str =
    "id, run_id, position, job_key, label, spec, needs, status, reason, max_attempts, attempts";

pub(super) fn col<T>(row: &AnyRow, name: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name).db()
}

fn to_u32(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

pub(super) fn step_number(step: Option<u32>) -> i64 {
    step.map_or(SYSTEM_STEP, i64::from)
}

pub(super) fn stream_number(stream: LogStream) -> i64 {
    stream.index() as i64
}

pub(super) fn run_from(r: &AnyRow) -> Result<Run> {
    Ok(Run {
        id: RunId::new(col(r, "id")?),
        name: col(r, "name")?,
        source: col(r, "source")?,
        status: col::<String>(r, "status")?.parse()?,
        created_at: col(r, "created_at")?,
        finished_at: col(r, "finished_at")?,
    })
}

pub(super) fn job_from(row: &AnyRow) -> Result<Job> {
    let needs: String = col(row, "needs")?;
    Ok(Job {
        id: JobId::new(col(row, "id")?),
        run_id: RunId::new(col(row, "run_id")?),
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

pub(super) fn attempt_from(row: &AnyRow) -> Result<Attempt> {
    Ok(Attempt {
        id: AttemptId::new(col(row, "id")?),
        job_id: JobId::new(col(row, "job_id")?),
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

pub(super) fn step_from(r: &AnyRow) -> Result<StepRecord> {
    Ok(StepRecord {
        attempt_id: AttemptId::new(col(r, "attempt_id")?),
        index: to_u32(col(r, "idx")?, "idx")?,
        name: col(r, "name")?,
        status: col::<String>(r, "status")?.parse()?,
        exit_code: col::<Option<i64>>(r, "exit_code")?.map(|c| c as i32),
        started_at: col(r, "started_at")?,
        finished_at: col(r, "finished_at")?,
    })
}

pub(super) fn chunk_from(r: &AnyRow) -> Result<LogChunk> {
    let step: i64 = col(r, "step")?;
    let stream: i64 = col(r, "stream")?;
    Ok(LogChunk {
        attempt_id: AttemptId::new(col(r, "attempt_id")?),
        seq: col(r, "seq")?,
        step: if step == SYSTEM_STEP {
            None
        } else {
            Some(to_u32(step, "step")?)
        },
        stream: usize::try_from(stream)
            .ok()
            .and_then(LogStream::from_index)
            .ok_or_else(|| StoreError::Corrupt(format!("stream {stream}")))?,
        data: col(r, "data")?,
        at: col(r, "at")?,
    })
}

//! [`StateStore::apply`] on SQL: a batch of changes in one transaction and
//! a handful of multi-row statements.

use std::collections::{HashMap, HashSet};

use super::SqlStore;
use super::rows::{
    ATTEMPT_COLUMNS, JOB_COLUMNS, SqlResult, attempt_from, col, job_from, step_number,
    stream_number,
};
use super::text::Dialect;
use super::text::{BATCH_LOG_BYTES, BATCH_ROWS, case_by_id, ids_of, placeholders};
use crate::store::{
    Applied, Attempt, AttemptId, AttemptStatus, Change, Job, JobId, JobStatus, LogChunk,
    StepRecord, StoreError,
};

/// What a refused guarded write is replaced by: a write of nothing.
static NOTHING: Change = Change::Logs(Vec::new());

type Result<T> = std::result::Result<T, StoreError>;

impl SqlStore {
    /// Checks the guards of a batch ([`Change::Guarded`]) against the
    /// attempts' rows, in the batch's order (a guarded write after an end
    /// of its attempt in the same batch finds it ended). On PostgreSQL the
    /// rows stay locked until the batch commits, so no other host's write
    /// of those attempts (recovery ending one, a stale holder writing one)
    /// can come between the check and the writes.
    ///
    /// Returns the writes to apply, with each refused one replaced by a
    /// write of nothing, and which were refused.
    pub(super) async fn apply_guards<'w>(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &'w [Change],
    ) -> Result<(Vec<&'w Change>, Vec<bool>)> {
        let mut guarded: Vec<AttemptId> = Vec::new();
        for w in writes {
            if let Change::Guarded {
                attempt, change, ..
            } = w
            {
                let touched = change
                    .attempts_written()
                    .ok_or_else(|| StoreError::Invalid(format!("{change:?} cannot be guarded")))?;
                if let Some(other) = touched.iter().find(|a| *a != attempt) {
                    return Err(StoreError::Invalid(format!(
                        "a write guarded for attempt {attempt} writes attempt {other}"
                    )));
                }
                guarded.push(*attempt);
            }
        }
        let mut refused = vec![false; writes.len()];
        if guarded.is_empty() {
            return Ok((writes.iter().collect(), refused));
        }
        guarded.sort_unstable();
        guarded.dedup();
        // Locked in id order: two batches lock the rows they share in the
        // same order.
        let lock = if self.dialect == Dialect::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let mut rows: HashMap<AttemptId, (AttemptStatus, String, i64)> = HashMap::new();
        for ids in guarded.chunks(BATCH_ROWS) {
            let sql = self.dialect.sequential_sql(format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id IN ({}) ORDER BY id{lock}",
                ids_of(ids.len(), 1, 1)
            ));
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(id.get());
            }
            for row in q.fetch_all(&mut *conn).await.db()? {
                let a = attempt_from(&row)?;
                rows.insert(a.id, (a.status, a.holder, a.lease_expires_at));
            }
        }
        let mut out: Vec<&'w Change> = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let (attempt, inner) = match w {
                Change::Guarded {
                    attempt,
                    guard,
                    change,
                } => {
                    let admitted = rows.get(attempt).is_some_and(|(status, holder, until)| {
                        guard.admits(*status, holder, *until)
                    });
                    if !admitted {
                        refused[i] = true;
                        out.push(&NOTHING);
                        continue;
                    }
                    (*attempt, &**change)
                }
                Change::Finish { attempt, .. } => (*attempt, w),
                _ => {
                    out.push(w);
                    continue;
                }
            };
            // An end of an attempt: what comes after it in the batch finds
            // it ended.
            if let (Change::Finish { status, .. }, Some(row)) = (inner, rows.get_mut(&attempt))
                && row.0 == AttemptStatus::Running
            {
                row.0 = *status;
            }
            out.push(inner);
        }
        Ok((out, refused))
    }

    pub(super) async fn apply_claims(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[&Change],
        out: &mut [Applied],
    ) -> Result<()> {
        // The first claim of a job in the batch is the one that can win.
        let mut first: HashMap<JobId, usize> = HashMap::new();
        let mut order: Vec<JobId> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            if let Change::Claim { job, .. } = w
                && !first.contains_key(job)
            {
                first.insert(*job, i);
                order.push(*job);
            }
        }
        for ids in order.chunks(BATCH_ROWS) {
            let sql = self.dialect.sequential_sql(format!(
                "UPDATE jobs SET status = $1, attempts = attempts + 1 \
                 WHERE status = $2 AND attempts < max_attempts AND id IN ({}) RETURNING {JOB_COLUMNS}",
                ids_of(ids.len(), 1, 3)
            ));
            let mut q = sqlx::query(&sql)
                .bind(JobStatus::Running.as_str())
                .bind(JobStatus::Queued.as_str());
            for id in ids {
                q = q.bind(id.get());
            }
            let claimed: Vec<Job> = q
                .fetch_all(&mut *conn)
                .await
                .db()?
                .iter()
                .map(job_from)
                .collect::<Result<_>>()?;
            if claimed.is_empty() {
                continue;
            }
            let sql = self.dialect.sequential_sql(format!(
                "INSERT INTO attempts (job_id, number, status, holder, lease_expires_at, token_hash, started_at) \
                 VALUES {} RETURNING {ATTEMPT_COLUMNS}",
                placeholders(claimed.len(), 7, 1)
            ));
            let mut q = sqlx::query(&sql);
            for job in &claimed {
                let Change::Claim {
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
                    .bind(job.id.get())
                    .bind(i64::from(job.attempts))
                    .bind(AttemptStatus::Running.as_str())
                    .bind(holder.as_str())
                    .bind(*lease_until)
                    .bind(token_hash.as_str())
                    .bind(*now);
            }
            let mut attempts: HashMap<JobId, Attempt> = HashMap::new();
            for row in q.fetch_all(&mut *conn).await.db()? {
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

    pub(super) async fn apply_vms(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[&Change],
    ) -> Result<()> {
        // The last write for an attempt wins, as if applied one by one.
        let mut vms: Vec<(AttemptId, &str)> = Vec::new();
        for w in writes {
            if let Change::SetVm { attempt, vm_id } = w {
                vms.retain(|(a, _)| a != attempt);
                vms.push((*attempt, vm_id));
            }
        }
        for rows in vms.chunks(BATCH_ROWS) {
            let sql = self.dialect.dialect_sql(format!(
                "UPDATE attempts SET vm_id = {} WHERE id IN ({})",
                case_by_id(rows.len(), 2, 1, 1),
                ids_of(rows.len(), 2, 1)
            ));
            let mut q = sqlx::query(&sql);
            for (attempt, vm) in rows {
                q = q.bind(attempt.get()).bind(*vm);
            }
            q.execute(&mut *conn).await.db()?;
        }
        Ok(())
    }

    pub(super) async fn apply_steps(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[&Change],
    ) -> Result<()> {
        // One row per step: a step that started and ended within the batch
        // is written once, as if the two writes were applied in order.
        let mut steps: Vec<StepRecord> = Vec::new();
        let mut at: HashMap<(AttemptId, u32), usize> = HashMap::new();
        for w in writes {
            if let Change::Step(step) = w {
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
            let sql = self.dialect.sequential_sql(format!(
                "INSERT INTO steps (attempt_id, idx, name, status, exit_code, started_at, finished_at) \
                 VALUES {} ON CONFLICT (attempt_id, idx) DO UPDATE SET name = excluded.name, \
                 status = excluded.status, exit_code = excluded.exit_code, \
                 started_at = COALESCE(steps.started_at, excluded.started_at), finished_at = excluded.finished_at",
                placeholders(rows.len(), 7, 1)
            ));
            let mut q = sqlx::query(&sql);
            for step in rows {
                q = q
                    .bind(step.attempt_id.get())
                    .bind(i64::from(step.index))
                    .bind(step.name.as_str())
                    .bind(step.status.as_str())
                    .bind(step.exit_code.map(i64::from))
                    .bind(step.started_at)
                    .bind(step.finished_at);
            }
            q.execute(&mut *conn).await.db()?;
        }
        Ok(())
    }

    pub(super) async fn apply_logs(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[&Change],
    ) -> Result<()> {
        let chunks: Vec<&LogChunk> = writes
            .iter()
            .filter_map(|w| match w {
                Change::Logs(chunks) => Some(chunks.iter()),
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
            let sql = self.dialect.sequential_sql(format!(
                "INSERT INTO log_chunks (attempt_id, seq, step, stream, data, at) VALUES {}",
                placeholders(rows.len(), 6, 1)
            ));
            let mut q = sqlx::query(&sql);
            for c in rows {
                q = q
                    .bind(c.attempt_id.get())
                    .bind(c.seq)
                    .bind(step_number(c.step))
                    .bind(stream_number(c.stream))
                    .bind(c.data.as_slice())
                    .bind(c.at);
            }
            q.execute(&mut *conn).await.db()?;
        }
        Ok(())
    }

    pub(super) async fn apply_finishes(
        &self,
        conn: &mut sqlx::AnyConnection,
        writes: &[&Change],
        out: &mut [Applied],
    ) -> Result<()> {
        // A second finish of the same attempt finds it ended: only the
        // first can succeed.
        let mut first: HashMap<AttemptId, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if let Change::Finish { attempt, .. } = w {
                first.entry(*attempt).or_insert(i);
            }
        }
        let mut finishes: Vec<usize> = first.into_values().collect();
        finishes.sort_unstable();
        for batch in finishes.chunks(BATCH_ROWS) {
            let sql = self.dialect.dialect_sql(format!(
                "UPDATE attempts SET status = {}, reason = {}, finished_at = {} \
                 WHERE status = $1 AND id IN ({}) RETURNING id",
                case_by_id(batch.len(), 4, 2, 1),
                case_by_id(batch.len(), 4, 2, 2),
                case_by_id(batch.len(), 4, 2, 3),
                ids_of(batch.len(), 4, 2)
            ));
            let mut q = sqlx::query(&sql).bind(AttemptStatus::Running.as_str());
            for &i in batch {
                let Change::Finish {
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
                    .bind(attempt.get())
                    .bind(status.as_str())
                    .bind(reason.as_deref())
                    .bind(*now);
            }
            let ended: HashSet<AttemptId> = q
                .fetch_all(&mut *conn)
                .await
                .db()?
                .iter()
                .map(|r| col(r, "id").map(AttemptId::new))
                .collect::<Result<_>>()?;
            // The jobs of the attempts that ended move on (one move per job).
            let mut jobs: Vec<(JobId, &str, Option<&str>)> = Vec::new();
            let mut extra: Vec<(JobId, u32)> = Vec::new();
            for &i in batch {
                let Change::Finish {
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
                    &self
                        .dialect
                        .sql("UPDATE jobs SET max_attempts = max_attempts + $1 WHERE id = $2"),
                )
                .bind(i64::from(n))
                .bind(job.get())
                .execute(&mut *conn)
                .await
                .db()?;
            }
            if jobs.is_empty() {
                continue;
            }
            let sql = self.dialect.dialect_sql(format!(
                "UPDATE jobs SET status = {}, reason = {} WHERE status = $1 AND id IN ({})",
                case_by_id(jobs.len(), 3, 2, 1),
                case_by_id(jobs.len(), 3, 2, 2),
                ids_of(jobs.len(), 3, 2)
            ));
            let mut q = sqlx::query(&sql).bind(JobStatus::Running.as_str());
            for (job, status, reason) in jobs {
                q = q.bind(job.get()).bind(status).bind(reason);
            }
            q.execute(&mut *conn).await.db()?;
        }
        Ok(())
    }
}

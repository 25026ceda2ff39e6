//! [`IntegrationStore`] on SQLite and PostgreSQL.

use async_trait::async_trait;
use sqlx::any::AnyRow;

use super::rows::{SqlResult, col, run_from};
use super::text::{BATCH_ROWS, ids_of, placeholders};
use super::{Result, SqlStore};
use crate::store::{
    HOST_RETENTION_MS, HostEntry, InboxEntry, InboxState, IntegrationStore, JobId, JobStatus,
    NewDelivery, Run, RunId, RunStatus, ScheduleEntry, StatusChange,
};

const COLUMNS: &str = "forge, id, event, body, received_at, state, outcome, run_id, target";

fn entry_from(r: &AnyRow) -> Result<InboxEntry> {
    Ok(InboxEntry {
        forge: col(r, "forge")?,
        id: col(r, "id")?,
        event: col(r, "event")?,
        body: col(r, "body")?,
        received_at: col(r, "received_at")?,
        state: col::<String>(r, "state")?.parse()?,
        outcome: col(r, "outcome")?,
        run: col::<Option<i64>>(r, "run_id")?.map(RunId::new),
        target: col(r, "target")?,
    })
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn status_from(r: &AnyRow) -> Result<StatusChange> {
    Ok(StatusChange {
        id: col(r, "id")?,
        run: RunId::new(col(r, "run_id")?),
        job: JobId::new(col(r, "job_id")?),
        key: col(r, "job_key")?,
        status: col::<String>(r, "status")?.parse()?,
        attempts: u32::try_from(col::<i64>(r, "attempts")?).unwrap_or(u32::MAX),
        reason: col(r, "reason")?,
        at: col(r, "at")?,
    })
}

#[async_trait]
impl IntegrationStore for SqlStore {
    async fn unsent_statuses(&self, after: i64, n: usize) -> Result<Vec<StatusChange>> {
        let rows = sqlx::query(&self.dialect.sql(
            "SELECT id, run_id, job_id, job_key, status, attempts, reason, at \
             FROM status_outbox WHERE id > $1 ORDER BY id LIMIT $2",
        ))
        .bind(after)
        .bind(limit(n))
        .fetch_all(&mut *self.conn().await.db()?)
        .await
        .db()?;
        rows.iter().map(status_from).collect()
    }

    async fn statuses_sent(&self, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(BATCH_ROWS) {
            let sql = self.dialect.sequential_sql(format!(
                "DELETE FROM status_outbox WHERE id IN ({})",
                ids_of(chunk.len(), 1, 1)
            ));
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *self.conn().await.db()?).await.db()?;
        }
        Ok(())
    }

    async fn record_delivery(
        &self,
        forge: &str,
        id: &str,
        event: &str,
        body: &[u8],
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(&self.dialect.sql(
            "INSERT INTO deliveries (forge, id, event, body, received_at, state) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (forge, id) DO NOTHING",
        ))
        .bind(forge)
        .bind(id)
        .bind(event)
        .bind(body)
        .bind(now)
        .bind(InboxState::Pending.as_str())
        .execute(&mut *self.conn().await.db()?)
        .await
        .db()?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_deliveries(&self, batch: &[NewDelivery<'_>], now: i64) -> Result<Vec<bool>> {
        use sqlx::Connection;
        let mut inserted: std::collections::HashSet<(String, String)> = Default::default();
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        // 6 parameters a row: well under both databases' limits.
        for rows in batch.chunks(100) {
            let sql = self.dialect.sequential_sql(format!(
                "INSERT INTO deliveries (forge, id, event, body, received_at, state) VALUES {} ON CONFLICT (forge, id) DO NOTHING RETURNING forge, id",
                placeholders(rows.len(), 6, 1)
            ));
            let mut q = sqlx::query(&sql);
            for d in rows {
                q = q
                    .bind(d.forge)
                    .bind(d.id)
                    .bind(d.event)
                    .bind(d.body)
                    .bind(now)
                    .bind(InboxState::Pending.as_str());
            }
            for row in q.fetch_all(&mut *tx).await.db()? {
                inserted.insert((col(&row, "forge")?, col(&row, "id")?));
            }
        }
        tx.commit().await.db()?;
        // The first of a repeated (forge, id) is the one inserted.
        Ok(batch
            .iter()
            .map(|d| inserted.remove(&(d.forge.to_string(), d.id.to_string())))
            .collect())
    }

    async fn deliveries(&self, state: InboxState, n: usize) -> Result<Vec<InboxEntry>> {
        let sql = self.dialect.dialect_sql(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = $1 ORDER BY received_at, id LIMIT $2"
        ));
        let rows = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(limit(n))
            .fetch_all(&mut *self.conn().await.db()?)
            .await
            .db()?;
        rows.iter().map(entry_from).collect()
    }

    async fn delivery(&self, forge: &str, id: &str) -> Result<Option<InboxEntry>> {
        let sql = self.dialect.dialect_sql(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE forge = $1 AND id = $2"
        ));
        let row = sqlx::query(&sql)
            .bind(forge)
            .bind(id)
            .fetch_optional(&mut *self.conn().await.db()?)
            .await
            .db()?;
        row.as_ref().map(entry_from).transpose()
    }

    async fn set_delivery(
        &self,
        forge: &str,
        id: &str,
        state: InboxState,
        outcome: &str,
        run: Option<RunId>,
        target: Option<&str>,
    ) -> Result<()> {
        // Once done, the body is dropped: the deliveries table keeps ids
        // (for deduplication) without keeping every payload.
        let sql = self.dialect.sql(if state == InboxState::Done {
            "UPDATE deliveries SET state = $1, outcome = $2, run_id = $3, target = $4, body = $7 WHERE forge = $5 AND id = $6"
        } else {
            "UPDATE deliveries SET state = $1, outcome = $2, run_id = $3, target = $4 WHERE forge = $5 AND id = $6"
        });
        let mut q = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(outcome)
            .bind(run.map(RunId::get))
            .bind(target)
            .bind(forge)
            .bind(id);
        if state == InboxState::Done {
            q = q.bind(Vec::<u8>::new());
        }
        q.execute(&mut *self.conn().await.db()?).await.db()?;
        Ok(())
    }

    async fn set_delivery_subject(&self, forge: &str, id: &str, subject: &str) -> Result<()> {
        sqlx::query(
            &self
                .dialect
                .sql("UPDATE deliveries SET subject = $1 WHERE forge = $2 AND id = $3"),
        )
        .bind(subject)
        .bind(forge)
        .bind(id)
        .execute(&mut *self.conn().await.db()?)
        .await
        .db()?;
        Ok(())
    }

    async fn latest_delivery_about(
        &self,
        forge: &str,
        subject: &str,
    ) -> Result<Option<InboxEntry>> {
        let sql = self.dialect.dialect_sql(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE forge = $1 AND subject = $2 AND run_id IS NOT NULL ORDER BY received_at DESC, id DESC LIMIT 1"
        ));
        let row = sqlx::query(&sql)
            .bind(forge)
            .bind(subject)
            .fetch_optional(&mut *self.conn().await.db()?)
            .await
            .db()?;
        row.as_ref().map(entry_from).transpose()
    }

    async fn set_schedules(
        &self,
        forge: &str,
        repository: &str,
        target: &str,
        crons: &[String],
        since: i64,
    ) -> Result<()> {
        use sqlx::Connection;
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        let existing = sqlx::query(
            &self
                .dialect
                .sql("SELECT cron FROM schedules WHERE forge = $1 AND repository = $2"),
        )
        .bind(forge)
        .bind(repository)
        .fetch_all(&mut *tx)
        .await
        .db()?;
        for row in existing {
            let cron: String = col(&row, "cron")?;
            if !crons.contains(&cron) {
                sqlx::query(&self.dialect.sql(
                    "DELETE FROM schedules WHERE forge = $1 AND repository = $2 AND cron = $3",
                ))
                .bind(forge)
                .bind(repository)
                .bind(cron)
                .execute(&mut *tx)
                .await
                .db()?;
            }
        }
        for cron in crons {
            sqlx::query(&self.dialect.sql(
                "INSERT INTO schedules (forge, repository, cron, target, since) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (forge, repository, cron) DO UPDATE SET target = excluded.target",
            ))
            .bind(forge)
            .bind(repository)
            .bind(cron.as_str())
            .bind(target)
            .bind(since)
            .execute(&mut *tx)
            .await
            .db()?;
        }
        tx.commit().await.db()?;
        Ok(())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleEntry>> {
        let rows = sqlx::query(
            "SELECT forge, repository, cron, target, since FROM schedules ORDER BY forge, repository, cron",
        )
        .fetch_all(&mut *self.conn().await.db()?)
        .await
        .db()?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleEntry {
                    forge: col(r, "forge")?,
                    repository: col(r, "repository")?,
                    cron: col(r, "cron")?,
                    target: col(r, "target")?,
                    since: col(r, "since")?,
                })
            })
            .collect()
    }

    async fn delivery_of_run(&self, run: RunId) -> Result<Option<InboxEntry>> {
        let sql = format!("SELECT {COLUMNS} FROM deliveries WHERE run_id = $1 LIMIT 1");
        self.one_by_id(sql, run.get(), entry_from).await
    }

    async fn run_by_source(&self, source: &str) -> Result<Option<RunId>> {
        let row = sqlx::query(
            &self
                .dialect
                .sql("SELECT id FROM runs WHERE source = $1 ORDER BY id DESC LIMIT 1"),
        )
        .bind(source)
        .fetch_optional(&mut *self.conn().await.db()?)
        .await
        .db()?;
        row.map(|r| col::<i64>(&r, "id").map(RunId::new))
            .transpose()
    }

    async fn recent_runs(&self, n: usize, before: Option<RunId>) -> Result<Vec<Run>> {
        let rows = sqlx::query(&self.dialect.sql(
            "SELECT id, name, source, status, created_at, finished_at FROM runs WHERE id < $1 ORDER BY id DESC LIMIT $2",
        ))
        .bind(before.map_or(i64::MAX, RunId::get))
        .bind(limit(n))
        .fetch_all(&mut *self.conn().await.db()?)
        .await
        .db()?;
        rows.iter().map(run_from).collect()
    }

    async fn heartbeat(&self, host: &HostEntry) -> Result<()> {
        sqlx::query(&self.dialect.sql(
            "INSERT INTO hosts (name, role, labels, capacity, running, version, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, labels = excluded.labels, \
             capacity = excluded.capacity, running = excluded.running, version = excluded.version, \
             started_at = excluded.started_at, seen_at = excluded.seen_at",
        ))
        .bind(&host.name)
        .bind(&host.role)
        .bind(host.labels.join(","))
        .bind(i64::from(host.capacity))
        .bind(i64::from(host.running))
        .bind(&host.version)
        .bind(host.started_at)
        .bind(host.seen_at)
        .execute(&mut *self.conn().await.db()?)
        .await
        .db()?;
        // Hosts that went away (renamed, retired) do not stay for ever.
        sqlx::query(&self.dialect.sql("DELETE FROM hosts WHERE seen_at < $1"))
            .bind(host.seen_at.saturating_sub(HOST_RETENTION_MS))
            .execute(&mut *self.conn().await.db()?)
            .await
            .db()?;
        Ok(())
    }

    async fn retry_job(&self, job: JobId) -> Result<bool> {
        use sqlx::Connection;
        let mut conn = self.conn().await.db()?;
        let mut tx = conn.begin().await.db()?;
        let done = sqlx::query(&self.dialect.sql(
            "UPDATE jobs SET status = $1, reason = NULL, max_attempts = attempts + 1 \
             WHERE id = $2 AND status IN ($3, $4, $5)",
        ))
        .bind(JobStatus::Queued.as_str())
        .bind(job.get())
        .bind(JobStatus::Failed.as_str())
        .bind(JobStatus::Cancelled.as_str())
        .bind(JobStatus::Succeeded.as_str())
        .execute(&mut *tx)
        .await
        .db()?
        .rows_affected()
            == 1;
        if done {
            sqlx::query(&self.dialect.sql(
                "UPDATE runs SET status = $1, finished_at = NULL \
                 WHERE id = (SELECT run_id FROM jobs WHERE id = $2)",
            ))
            .bind(RunStatus::Running.as_str())
            .bind(job.get())
            .execute(&mut *tx)
            .await
            .db()?;
        }
        tx.commit().await.db()?;
        Ok(done)
    }

    async fn hosts(&self, since: i64) -> Result<Vec<HostEntry>> {
        let rows = sqlx::query(&self.dialect.sql(
            "SELECT name, role, labels, capacity, running, version, started_at, seen_at \
             FROM hosts WHERE seen_at >= $1 ORDER BY name",
        ))
        .bind(since)
        .fetch_all(&mut *self.conn().await.db()?)
        .await
        .db()?;
        rows.iter()
            .map(|r| {
                let labels: String = col(r, "labels")?;
                let count = |name: &str| -> Result<u32> {
                    Ok(u32::try_from(col::<i64>(r, name)?.max(0)).unwrap_or(u32::MAX))
                };
                Ok(HostEntry {
                    name: col(r, "name")?,
                    role: col(r, "role")?,
                    labels: labels
                        .split(',')
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect(),
                    capacity: count("capacity")?,
                    running: count("running")?,
                    version: col(r, "version")?,
                    started_at: col(r, "started_at")?,
                    seen_at: col(r, "seen_at")?,
                })
            })
            .collect()
    }
}

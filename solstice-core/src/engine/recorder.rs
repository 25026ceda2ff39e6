//! Group commit. Every write on the engine's hot path (claims, VM ids,
//! steps, log chunks, attempt ends) goes through one task, which applies
//! whatever has queued up meanwhile as one batch
//! ([`StateStore::apply`]: one transaction, a few multi-row statements).
//! The store sees a handful of statements per batch instead of about twenty
//! per job, and the writes of many jobs share each commit.
//!
//! Writes are applied in the order they were queued, so a write that is
//! waited for (an attempt's end) lands after every write queued before it
//! (that attempt's steps and logs).
//!
//! A guarded write the store refused (its attempt's lease is lost) is also
//! said on the `fenced` channel, with its attempt, whether or not anyone
//! waits for it: the engine stops that attempt.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{Applied, AttemptId, Change, Guard, StateStore, StoreError};

/// Most writes in one batch.
const MAX_BATCH: usize = 1024;
/// Most log bytes in one batch.
const MAX_BATCH_LOG_BYTES: usize = 8 << 20;
/// How long a batch is tried again while the store is unreachable.
const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);
/// Writes that may wait in the queue; a full queue makes writers wait (the
/// back-pressure that keeps a runner's log stream from outrunning the store).
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Applied, StoreError>>;

struct Entry {
    write: Change,
    reply: Option<Reply>,
}

/// The handle jobs write through.
pub(super) struct Recorder {
    tx: mpsc::Sender<Entry>,
}

impl Recorder {
    /// Starts the writer task; the receiver hears the attempts of the
    /// guarded writes the store refused.
    pub(super) fn start(
        store: Arc<dyn StateStore>,
    ) -> (Recorder, JoinHandle<()>, mpsc::UnboundedReceiver<AttemptId>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (fenced_tx, fenced) = mpsc::unbounded_channel();
        (
            Recorder { tx },
            tokio::spawn(write_loop(store, rx, fenced_tx)),
            fenced,
        )
    }

    /// Queues a write and waits until it is stored.
    pub(super) async fn apply(&self, write: Change) -> Result<Applied, StoreError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Entry {
                write,
                reply: Some(reply),
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a write without waiting for it to be stored (only for room in
    /// the queue). A failure is logged.
    pub(super) async fn send(&self, write: Change) {
        if self.tx.send(Entry { write, reply: None }).await.is_err() {
            tracing::warn!("the engine's store writer has stopped; a write is lost");
        }
    }
}

fn log_bytes(w: &Change) -> usize {
    match w {
        Change::Logs(chunks) => chunks.iter().map(|c| c.data.len()).sum(),
        _ => 0,
    }
}

/// Says the attempt of a holder's refused write (a refused
/// [`Guard::Expired`] only means the holder renewed in time).
fn tell_fenced(fenced: &mpsc::UnboundedSender<AttemptId>, write: &Change, result: &Applied) {
    if let (
        Change::Guarded {
            attempt,
            guard: Guard::Holder { .. },
            ..
        },
        Applied::Fenced,
    ) = (write, result)
    {
        let _ = fenced.send(*attempt);
    }
}

async fn write_loop(
    store: Arc<dyn StateStore>,
    mut rx: mpsc::Receiver<Entry>,
    fenced: mpsc::UnboundedSender<AttemptId>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = log_bytes(&first.write);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_LOG_BYTES {
            match rx.try_recv() {
                Ok(entry) => {
                    bytes += log_bytes(&entry.write);
                    batch.push(entry);
                }
                Err(_) => break,
            }
        }
        let (writes, replies): (Vec<Change>, Vec<Option<Reply>>) =
            batch.into_iter().map(|e| (e.write, e.reply)).unzip();
        let started = std::time::Instant::now();
        let mut result = store.apply(&writes).await;
        // The database away (a restart, a lost connection): a batch that
        // is one transaction was not applied at all, so it is tried again,
        // with backoff, for up to STORE_PATIENCE; the writers wait.
        let mut backoff = std::time::Duration::from_millis(100);
        while let Err(e) = &result
            && e.is_transient()
            && store.atomic_apply()
            && started.elapsed() < STORE_PATIENCE
        {
            tracing::warn!(error = %crate::util::error_chain(e), writes = writes.len(), "the store is unreachable; trying the writes again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            result = store.apply(&writes).await;
        }
        tracing::trace!(
            writes = writes.len(),
            micros = started.elapsed().as_micros() as u64,
            "applied a batch"
        );
        match result {
            Ok(results) => {
                for ((reply, result), write) in replies.into_iter().zip(results).zip(&writes) {
                    tell_fenced(&fenced, write, &result);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(result));
                    }
                }
            }
            Err(e) if writes.len() == 1 => {
                report(replies.into_iter().next().flatten(), Err(e));
            }
            Err(e) if !store.atomic_apply() => {
                // Part of the batch may be applied: applying it again
                // could apply that part twice.
                tracing::error!(error = %crate::util::error_chain(&e), writes = writes.len(), "a batch of writes failed");
                let cause = std::sync::Arc::new(e);
                for reply in replies {
                    report(reply, Err(StoreError::Batch(cause.clone())));
                }
            }
            Err(e) => {
                // One bad write must not sink the others: apply each alone.
                tracing::warn!(error = %crate::util::error_chain(&e), writes = writes.len(), "a batch of writes failed; applying them one by one");
                for (write, reply) in writes.iter().zip(replies) {
                    let result =
                        store
                            .apply(std::slice::from_ref(write))
                            .await
                            .and_then(|mut r| {
                                r.pop().ok_or_else(|| {
                                    StoreError::Corrupt("the store returned no result".into())
                                })
                            });
                    if let Ok(applied) = &result {
                        tell_fenced(&fenced, write, applied);
                    }
                    report(reply, result);
                }
            }
        }
    }
}

fn report(reply: Option<Reply>, result: Result<Applied, StoreError>) {
    match (reply, result) {
        (Some(reply), result) => {
            let _ = reply.send(result);
        }
        (None, Err(e)) => {
            tracing::error!(error = %crate::util::error_chain(&e), "storing a write failed")
        }
        (None, Ok(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        AttemptId, AttemptStatus, JobStatus, LogChunk, LogStream, NewJob, SqlStore, StepRecord,
        StepStatus,
    };

    fn chunk(attempt: AttemptId, seq: i64) -> LogChunk {
        LogChunk {
            attempt_id: attempt,
            seq,
            step: Some(0),
            stream: LogStream::Stdout,
            data: b"x".to_vec(),
            at: 0,
        }
    }

    /// A write the database refuses (a log chunk stored twice) fails alone:
    /// the other writes of its batch are applied and answered.
    #[tokio::test]
    async fn a_bad_write_does_not_sink_its_batch() {
        let store = Arc::new(SqlStore::connect("sqlite::memory:").await.expect("store"));
        let job = NewJob {
            key: "a".into(),
            label: "l".into(),
            spec: "{}".into(),
            needs: vec![],
            max_attempts: 1,
        };
        let run = store.create_run("r", "{}", &[job], 0).await.expect("run");
        let id = store.jobs(run).await.expect("jobs")[0].id;
        store
            .transition_job(id, &[JobStatus::Pending], JobStatus::Queued, None)
            .await
            .expect("queue");
        let attempt = store.claim(id, "e", 1_000, "h", 0).await.expect("claim");
        store
            .append_logs(&[chunk(attempt.id, 0)])
            .await
            .expect("first chunk");

        // Queue the whole batch before the loop runs, so it is one batch.
        let (tx, rx) = mpsc::channel(QUEUE);
        let (bad_reply, bad) = oneshot::channel();
        let (finish_reply, finished) = oneshot::channel();
        let step = StepRecord {
            attempt_id: attempt.id,
            index: 0,
            name: "s".into(),
            status: StepStatus::Succeeded,
            exit_code: Some(0),
            started_at: Some(1),
            finished_at: Some(2),
        };
        for (write, reply) in [
            (Change::Step(step), None),
            (Change::Logs(vec![chunk(attempt.id, 0)]), Some(bad_reply)),
            (Change::Logs(vec![chunk(attempt.id, 1)]), None),
            (
                Change::Finish {
                    attempt: attempt.id,
                    status: AttemptStatus::Succeeded,
                    reason: None,
                    now: 3,
                    job: id,
                    job_status: JobStatus::Succeeded,
                    job_reason: None,
                    extra_attempts: 0,
                },
                Some(finish_reply),
            ),
        ] {
            assert!(tx.try_send(Entry { write, reply }).is_ok());
        }
        drop(tx);
        write_loop(store.clone(), rx, mpsc::unbounded_channel().0).await;

        assert!(
            bad.await.expect("answered").is_err(),
            "the duplicate chunk fails"
        );
        assert_eq!(
            finished.await.expect("answered").expect("applied"),
            Applied::Finished(true)
        );
        assert_eq!(store.steps(attempt.id).await.expect("steps").len(), 1);
        assert_eq!(
            store
                .logs(attempt.id)
                .await
                .expect("logs")
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>(),
            vec![0, 1]
        );
        let job = store.job(id).await.expect("job").expect("exists");
        assert_eq!(job.status, JobStatus::Succeeded);
    }
}

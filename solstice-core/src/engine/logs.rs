//! An attempt's log: every byte is masked and capped ([`LogIngest`]),
//! stored in order, and published as an event.

use super::{Engine, EngineEvent, LiveAttempt, now_ms};
use crate::store::{Change, LogChunk, LogStream};

impl Engine {
    pub(super) async fn system_log(&self, live: &LiveAttempt, text: &str) {
        self.append_log(live, None, LogStream::System, text.as_bytes())
            .await;
    }

    /// Masks and stores output; also publishes it as an event.
    pub(super) async fn append_log(
        &self,
        live: &LiveAttempt,
        step: Option<u32>,
        stream: LogStream,
        data: &[u8],
    ) {
        let mut guard = live.ingest.lock().await;
        let parts = guard.0.push_stream(stream.index(), data);
        let first = guard.1;
        guard.1 += parts.len() as i64;
        drop(guard);
        for (seq, (stream, masked)) in (first..).zip(parts) {
            self.store_chunk(live, seq, step, stream_at(stream), masked)
                .await;
        }
    }

    pub(super) async fn flush_log(&self, live: &LiveAttempt) {
        let mut guard = live.ingest.lock().await;
        let parts = guard.0.finish_streams();
        let first = guard.1;
        guard.1 += parts.len() as i64;
        drop(guard);
        for (seq, (stream, rest)) in (first..).zip(parts) {
            self.store_chunk(live, seq, None, stream_at(stream), rest)
                .await;
        }
    }

    pub(super) async fn store_chunk(
        &self,
        live: &LiveAttempt,
        seq: i64,
        step: Option<u32>,
        stream: LogStream,
        data: Vec<u8>,
    ) {
        let chunk = LogChunk {
            attempt_id: live.attempt.id,
            seq,
            step,
            stream,
            data: data.clone(),
            at: now_ms(),
        };
        self.inner
            .recorder
            .send(self.as_holder(live.attempt.id, Change::Logs(vec![chunk])))
            .await;
        self.emit(EngineEvent::Log {
            run: live.run,
            key: live.key.clone(),
            step,
            stream,
            data,
        });
    }
}

/// The stream of a masker's output index (the masker keeps one lane per
/// [`LogStream`]).
pub(super) fn stream_at(index: usize) -> LogStream {
    LogStream::from_index(index).unwrap_or(LogStream::System)
}

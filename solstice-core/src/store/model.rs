//! The records a [`crate::store::StateStore`] keeps.
//!
//! They are plain rows, exhaustive on purpose: every store builds them from
//! what it read back, so a new field is a change every store must make
//! anyway (a breaking release of the trait), not something a constructor
//! could hide.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StoreError;
pub use crate::log::LogStream;

type Result<T> = std::result::Result<T, StoreError>;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// The id a store gave the row.
            pub const fn new(id: i64) -> $name {
                $name(id)
            }

            /// The number the store keeps.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> std::result::Result<$name, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id_type!(
    /// A run's id.
    RunId
);
id_type!(
    /// A job's id (unique across runs).
    JobId
);
id_type!(
    /// An attempt's id (unique across jobs).
    AttemptId
);

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
    /// The step that wrote it; `None` for the system's own lines.
    pub step: Option<u32>,
    /// Which stream.
    pub stream: LogStream,
    /// Bytes, not necessarily UTF-8.
    pub data: Vec<u8>,
    /// Unix ms.
    pub at: i64,
}

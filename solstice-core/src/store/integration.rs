//! [`IntegrationStore`]: what the integration layer (webhooks in, statuses
//! out) keeps beside the engine's runs: the deliveries it accepted, what
//! became of each, and the listings its API serves.

use async_trait::async_trait;

use super::{JobId, JobStatus, Run, RunId, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// Where a recorded delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InboxState {
    /// Accepted, not yet processed (picked up again after a restart).
    Pending,
    /// Held until an operator approves it (a pull request from a fork).
    AwaitingApproval,
    /// Processed: its outcome says what came of it.
    Done,
}

impl InboxState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InboxState::Pending => "pending",
            InboxState::AwaitingApproval => "approval",
            InboxState::Done => "done",
        }
    }
}

impl std::str::FromStr for InboxState {
    type Err = StoreError;

    /// The state [`InboxState::as_str`] stored.
    fn from_str(text: &str) -> Result<InboxState> {
        Ok(match text {
            "pending" => InboxState::Pending,
            "approval" => InboxState::AwaitingApproval,
            "done" => InboxState::Done,
            other => return Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
        })
    }
}

/// A delivery as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxEntry {
    /// The forge's name (`github`, `forgejo`).
    pub forge: String,
    /// The forge's delivery id.
    pub id: String,
    /// The event name.
    pub event: String,
    /// The raw body (emptied once processed).
    pub body: Vec<u8>,
    /// When it was accepted (Unix ms).
    pub received_at: i64,
    /// Where it is.
    pub state: InboxState,
    /// What came of it, for people.
    pub outcome: Option<String>,
    /// The run it started.
    pub run: Option<RunId>,
    /// What the run reports to (the integration layer's own JSON).
    pub target: Option<String>,
}

/// A cron schedule of a repository ([`IntegrationStore::schedules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleEntry {
    /// The forge's name.
    pub forge: String,
    /// `owner/name`.
    pub repository: String,
    /// The cron expression as written.
    pub cron: String,
    /// What a run of it reports to (the integration layer's JSON).
    pub target: String,
    /// Only ticks after this minute (Unix minutes) fire.
    pub since: i64,
}

/// One daemon of the fleet as its last heartbeat left it
/// ([`IntegrationStore::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostEntry {
    /// The host's unique name (its engine's lease holder).
    pub name: String,
    /// `orchestrator`, `integration` or `all-in-one`.
    pub role: String,
    /// The `runs_on` labels it takes.
    pub labels: Vec<String>,
    /// Most jobs at once.
    pub capacity: u32,
    /// Jobs running at the heartbeat.
    pub running: u32,
    /// The daemon's version.
    pub version: String,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// Its last heartbeat (Unix ms).
    pub seen_at: i64,
}

impl HostEntry {
    /// A heartbeat of `name`, seen now.
    pub fn new(name: impl Into<String>, role: impl Into<String>) -> HostEntry {
        HostEntry {
            name: name.into(),
            role: role.into(),
            labels: Vec::new(),
            capacity: 0,
            running: 0,
            version: String::new(),
            started_at: 0,
            seen_at: 0,
        }
    }
}

/// A delivery to record ([`IntegrationStore::record_deliveries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewDelivery<'a> {
    /// The forge's name.
    pub forge: &'a str,
    /// The delivery id.
    pub id: &'a str,
    /// The event name.
    pub event: &'a str,
    /// The raw body.
    pub body: &'a [u8],
}

impl<'a> NewDelivery<'a> {
    /// A delivery.
    pub fn new(forge: &'a str, id: &'a str, event: &'a str, body: &'a [u8]) -> NewDelivery<'a> {
        NewDelivery {
            forge,
            id,
            event,
            body,
        }
    }
}

/// A status a forge must hear: one change of a job's status or attempt
/// count, as the status outbox keeps it ([`IntegrationStore::unsent_statuses`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusChange {
    /// The entry's number: entries of one job are numbered in the order
    /// of the changes.
    pub id: i64,
    /// The job's run.
    pub run: RunId,
    /// The job.
    pub job: JobId,
    /// The job's key (its expanded id).
    pub key: String,
    /// The job's status after the change.
    pub status: JobStatus,
    /// Its attempts after the change.
    pub attempts: u32,
    /// Its reason after the change.
    pub reason: Option<String>,
    /// When the change was made (Unix ms, by the database's clock).
    pub at: i64,
}

/// How long a status nobody sent stays in the outbox (a store without an
/// integration layer, a daemon away for longer): 7 days.
pub const STATUS_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long a host that stopped beating stays in the fleet's listing
/// store: 7 days.
pub const HOST_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The integration layer's records. Implemented by
/// [`SqlStore`](super::SqlStore) on SQLite and PostgreSQL.
#[async_trait]
pub trait IntegrationStore: Send + Sync {
    /// Records a delivery as pending, durably, before it is acknowledged.
    /// `false` (and nothing changes) when `(forge, id)` was recorded
    /// before: the forge sent it again.
    async fn record_delivery(
        &self,
        forge: &str,
        id: &str,
        event: &str,
        body: &[u8],
        now: i64,
    ) -> Result<bool>;

    /// [`IntegrationStore::record_delivery`] for many at once, in one
    /// transaction where the store can (what a busy webhook endpoint
    /// gathers while the previous batch commits): one `bool` per
    /// delivery, in order. A delivery repeated within `batch` is new only
    /// the first time.
    async fn record_deliveries(&self, batch: &[NewDelivery<'_>], now: i64) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(
                self.record_delivery(d.forge, d.id, d.event, d.body, now)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Up to `limit` deliveries in `state`, oldest first.
    async fn deliveries(&self, state: InboxState, limit: usize) -> Result<Vec<InboxEntry>>;

    /// One delivery.
    async fn delivery(&self, forge: &str, id: &str) -> Result<Option<InboxEntry>>;

    /// Moves a delivery on. A `Done` delivery's body is dropped (what the
    /// run needs is in `target`).
    async fn set_delivery(
        &self,
        forge: &str,
        id: &str,
        state: InboxState,
        outcome: &str,
        run: Option<RunId>,
        target: Option<&str>,
    ) -> Result<()>;

    /// Notes what a delivery is about (`owner/name@commit`).
    async fn set_delivery_subject(&self, forge: &str, id: &str, subject: &str) -> Result<()>;

    /// The newest delivery about `subject` that started a run.
    async fn latest_delivery_about(&self, forge: &str, subject: &str)
    -> Result<Option<InboxEntry>>;

    /// Sets the cron schedules of `repository`'s workflow: `crons` are
    /// kept (a new one only fires for ticks after `since`, Unix minutes;
    /// one already there keeps its own), every other schedule of the
    /// repository is dropped, and all get `target`.
    async fn set_schedules(
        &self,
        forge: &str,
        repository: &str,
        target: &str,
        crons: &[String],
        since: i64,
    ) -> Result<()>;

    /// Every schedule.
    async fn schedules(&self) -> Result<Vec<ScheduleEntry>>;

    /// The delivery that started `run`.
    async fn delivery_of_run(&self, run: RunId) -> Result<Option<InboxEntry>>;

    /// The newest run whose `source` is exactly `source` (how a delivery
    /// processed again after a crash finds the run it already started).
    async fn run_by_source(&self, source: &str) -> Result<Option<RunId>>;

    /// Up to `limit` runs, newest first, older than `before` when given.
    async fn recent_runs(&self, limit: usize, before: Option<RunId>) -> Result<Vec<Run>>;

    /// Records a host's heartbeat (inserts or replaces its row), and
    /// forgets every host not seen for [`HOST_RETENTION_MS`] before it.
    async fn heartbeat(&self, host: &HostEntry) -> Result<()>;

    /// Every host that sent a heartbeat since `since` (Unix ms), by name.
    async fn hosts(&self, since: i64) -> Result<Vec<HostEntry>>;

    /// Up to `limit` entries of the status outbox numbered above `after`
    /// (0: all), oldest first: every
    /// change of a job's status or attempt count, written in the same
    /// transaction as the change (by whichever host made it), until
    /// [`IntegrationStore::statuses_sent`] removes it or it is older than
    /// [`STATUS_RETENTION_MS`].
    async fn unsent_statuses(&self, after: i64, limit: usize) -> Result<Vec<StatusChange>>;

    /// Removes entries from the status outbox: their statuses were sent
    /// (or need not be).
    async fn statuses_sent(&self, ids: &[i64]) -> Result<()>;

    /// Queues an ended job (`failed`, `cancelled` or `succeeded`) again for
    /// one more attempt, its earlier attempts kept, and reopens its run.
    /// `false` when the job is not in one of those states (nothing
    /// changed). The caller publishes it.
    async fn retry_job(&self, job: JobId) -> Result<bool>;
}

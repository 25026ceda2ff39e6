//! A fleet as real processes on the machine's PostgreSQL and RabbitMQ:
//! one `solstice integration` (webhooks in, statuses out, the API) and
//! three `solstice orchestrator`s (local provider). Each test has its own
//! database and queues, removed at the end (also when it fails).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use solstice_core::store::{
    AttemptStatus, IntegrationStore, JobStatus, RunStatus, SqlStore, StateStore,
};
use solstice_forge::Forge;
use support::{Harness, push};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// One fleet at a time: one test restarts the broker and the database.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp() -> String {
    std::env::var("SOLSTICE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The integration daemon (in the harness), the orchestrators, and the
/// database and queues they share.
struct Fleet {
    h: Harness,
    name: String,
    orchestrators: BTreeMap<String, Child>,
}

impl Fleet {
    async fn new(test: &str, lease_seconds: u32) -> Fleet {
        let name = format!("solstice_test_{}_{test}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name}"));
        psql(&format!("CREATE DATABASE {name}"));
        let extra = format!(
            "database \"{PG}/{name}\"\nqueue \"{}\"\nqueue-prefix \"{}\"\nlease-seconds {lease_seconds}\n",
            amqp(),
            name.replace('_', "-")
        );
        let mut h = Harness::new(true, &extra).await;
        h.start_as("integration", &[("SOLSTICE_HOST_NAME", "integration")])
            .await;
        Fleet {
            h,
            name,
            orchestrators: BTreeMap::new(),
        }
    }

    fn start_orchestrator(&mut self, host: &str, capacity: usize) {
        self.start_orchestrator_with(host, capacity, &[]);
    }

    /// An orchestrator with `env` added to (or overriding) its settings.
    fn start_orchestrator_with(&mut self, host: &str, capacity: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.h.dir.path().join(format!("{host}.log")))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args(["orchestrator", "--config"])
            .arg(&self.h.config)
            .env("SOLSTICE_HOST_NAME", host)
            .env("SOLSTICE_CAPACITY", capacity.to_string())
            .env("SOLSTICE_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start an orchestrator");
        self.orchestrators.insert(host.to_string(), child);
    }

    fn kill(&mut self, host: &str) {
        if let Some(mut child) = self.orchestrators.remove(host) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to `host`'s process alone (not to
    /// its runners).
    fn signal(&self, host: &str, signal: &str) {
        let pid = self.orchestrators[host].id().to_string();
        run_ok("kill", &[&format!("-{signal}"), &pid]);
    }

    /// Whether `host`'s process is still running.
    fn alive(&mut self, host: &str) -> bool {
        self.orchestrators
            .get_mut(host)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What `host` logged so far.
    fn log_of(&self, host: &str) -> String {
        std::fs::read_to_string(self.h.dir.path().join(format!("{host}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = self.h.daemon_log();
        for host in self.orchestrators.keys() {
            out.push_str(&format!("\n--- {host}:\n"));
            out.push_str(
                &std::fs::read_to_string(self.h.dir.path().join(format!("{host}.log")))
                    .unwrap_or_default(),
            );
        }
        out
    }

    /// Waits until `n` hosts (this daemon and the orchestrators) beat.
    async fn wait_for_hosts(&self, store: &SqlStore, n: usize) {
        wait_until(
            self,
            &format!("{n} hosts in the fleet"),
            Duration::from_secs(60),
            async || store.hosts(0).await.map(|h| h.len()).unwrap_or(0) == n,
        )
        .await;
    }

    /// Delivers a signed push of `sha` as delivery `id`; it is accepted.
    async fn push(&self, sha: &str, id: &str) {
        let (status, _) = self
            .h
            .deliver(Forge::GitHub, "push", id, &push(&self.h.repo, sha))
            .await;
        assert_eq!(status, 202);
    }

    /// Waits up to `limit` until the newest run has ended.
    async fn wait_for_the_run_to_end(&self, store: &SqlStore, limit: Duration) {
        wait_until(self, "the run ends", limit, async || {
            store
                .recent_runs(1, None)
                .await
                .ok()
                .and_then(|r| r.first().map(|r| r.status != RunStatus::Running))
                .unwrap_or(false)
        })
        .await;
    }

    async fn store(&self) -> SqlStore {
        SqlStore::connect(&format!("{PG}/{}", self.name))
            .await
            .expect("the fleet's database")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let hosts: Vec<String> = self.orchestrators.keys().cloned().collect();
        for host in hosts {
            self.kill(&host);
        }
        self.h.kill();
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-q",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
        // The queues, their retry lanes and dead letters, and the
        // dead-letter exchanges.
        let prefix = format!("{}.", self.name.replace('_', "-"));
        solstice_queue::testing::delete_broker_objects(&amqp(), |name| name.starts_with(&prefix));
    }
}

/// The jobs of the newest run; none while there is no run or the store
/// cannot be read (the waits below try again).
async fn newest_jobs(store: &SqlStore) -> Vec<solstice_core::store::Job> {
    let Ok(runs) = store.recent_runs(1, None).await else {
        return Vec::new();
    };
    let Some(run) = runs.first() else {
        return Vec::new();
    };
    store.jobs(run.id).await.unwrap_or_default()
}

/// Waits up to `limit` for `done`, panicking with every log.
async fn wait_until(
    fleet: &Fleet,
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; logs:\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A workflow of `jobs` one-step jobs (matrices of at most 250).
fn many(jobs: usize, step: &str) -> String {
    let mut out = String::from("workflow {\n");
    let mut left = jobs;
    let mut n = 0;
    while left > 0 {
        let here = left.min(250);
        let values: Vec<String> = (0..here).map(|i| format!("\"{i}\"")).collect();
        out.push_str(&format!(
            "  job id=\"j{n}\" {{\n    matrix {{ n {}; }}\n    step run=\"{step}\"\n  }}\n",
            values.join(" ")
        ));
        left -= here;
        n += 1;
    }
    out.push('}');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_orchestrators_run_a_thousand_jobs_once_each_within_their_capacity() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("thousand", 30).await;
    let capacity = 4;
    for host in ["orch-1", "orch-2", "orch-3"] {
        fleet.start_orchestrator(host, capacity);
    }
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 4).await;
    let jobs = 1_000;
    let sha = fleet.h.commit(&many(jobs, "true"));
    fleet.push(&sha, "d-thousand").await;
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(600))
        .await;
    let run = store.recent_runs(1, None).await.expect("runs").remove(0);
    assert_eq!(run.status, RunStatus::Succeeded, "{}", fleet.logs());
    let all = store.jobs(run.id).await.expect("jobs");
    assert_eq!(all.len(), jobs);
    // Every job: one attempt, and it succeeded (none lost, none twice).
    let mut spans: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for job in &all {
        assert_eq!(job.status, JobStatus::Succeeded, "{}", job.key);
        let attempts = store.attempts(job.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1, "{}: {attempts:?}", job.key);
        let a = &attempts[0];
        assert_eq!(a.status, AttemptStatus::Succeeded);
        spans
            .entry(a.holder.clone())
            .or_default()
            .push((a.started_at, a.finished_at.expect("finished")));
    }
    // Every orchestrator worked, and none ran more than its capacity at
    // once (by the store's attempt times).
    assert_eq!(spans.len(), 3, "{:?}", spans.keys().collect::<Vec<_>>());
    for (host, spans) in &spans {
        assert!(host.starts_with("orch-"), "{host}");
        let mut edges: Vec<(i64, i32)> =
            spans.iter().flat_map(|&(s, f)| [(s, 1), (f, -1)]).collect();
        // An end before a start at the same millisecond.
        edges.sort();
        let (mut now, mut most) = (0, 0);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        assert!(most <= capacity as i32, "{host} ran {most} jobs at once");
    }
    // The forge heard about every job, whichever host ran it, once
    // completed, after its other states.
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.h.completed(&sha) != jobs {
        if Instant::now() > deadline {
            // What the forge has, and what the outbox still holds.
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for (_, history, _) in fleet.h.checks(&sha) {
                *seen.entry(history.join(">")).or_default() += 1;
            }
            let left = store.unsent_statuses(0, 100_000).await.map(|l| l.len());
            panic!(
                "timed out waiting for every job's final status: check runs by history {seen:?}, {} check runs, outbox {left:?}; logs:\n{}",
                fleet.h.checks(&sha).len(),
                fleet.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, history, _) in fleet.h.checks(&sha) {
        assert_eq!(
            history.last().map(String::as_str),
            Some("completed"),
            "{name}: {history:?}"
        );
        assert_eq!(
            history.iter().filter(|s| *s == "completed").count(),
            1,
            "{name}: {history:?}"
        );
        // Never backwards (an attempt's `in_progress`, then `queued`, was
        // seen in a few jobs of every run).
        let rank = |s: &String| match s.as_str() {
            "queued" => 0,
            "in_progress" => 1,
            _ => 2,
        };
        assert!(
            history.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "{name} went back: {history:?}"
        );
    }
    // The fleet as the API shows it.
    let hosts = fleet.h.get_json("/api/v1/hosts").await;
    assert_eq!(hosts["hosts"].as_array().map(Vec::len), Some(4), "{hosts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_orchestrators_job_runs_again_elsewhere_within_the_lease() {
    let lease = 6;
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("killed", lease).await;
    fleet.start_orchestrator("orch-1", 1);
    fleet.start_orchestrator("orch-2", 1);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 3).await;
    let sha = fleet
        .h
        .commit("workflow {\n  job id=\"slow\" {\n    step run=\"echo started; sleep 8\"\n  }\n}");
    fleet.push(&sha, "d-killed").await;
    // Attempt 1 starts on one of them; that one dies.
    let mut first = None;
    wait_until(
        &fleet,
        "attempt 1 runs",
        Duration::from_secs(60),
        async || {
            let jobs = newest_jobs(&store).await;
            let Some(job) = jobs.first() else {
                return false;
            };
            let attempts = store.attempts(job.id).await.unwrap_or_default();
            first = attempts.into_iter().next().map(|a| (job.id, a));
            first.is_some()
        },
    )
    .await;
    let (job, attempt1) = first.expect("attempt 1");
    // Mid-job: its step has started and its first output is stored.
    wait_until(
        &fleet,
        "attempt 1's first output",
        Duration::from_secs(60),
        async || {
            store
                .logs(attempt1.id)
                .await
                .map(|l| {
                    l.iter()
                        .any(|c| String::from_utf8_lossy(&c.data).contains("started"))
                })
                .unwrap_or(false)
        },
    )
    .await;
    let victim = attempt1.holder.clone();
    fleet.kill(&victim);
    let killed_at = solstice_core::engine::now_ms();
    wait_until(
        &fleet,
        "attempt 2 starts elsewhere",
        Duration::from_secs(120),
        async || {
            store
                .attempts(job)
                .await
                .map(|a| a.len() >= 2)
                .unwrap_or(false)
        },
    )
    .await;
    let attempts = store.attempts(job).await.expect("attempts");
    let attempt2 = &attempts[1];
    assert_eq!(attempt2.number, 2);
    assert_ne!(attempt2.holder, victim);
    // Within the lease plus one reaper pass (half a lease), and a second
    // for the heartbeat's slack.
    let waited = attempt2.started_at - killed_at;
    let bound = i64::from(lease) * 1000 * 3 / 2 + 1000;
    assert!(
        waited <= bound,
        "attempt 2 started {waited} ms after the kill (bound {bound})"
    );
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(60))
        .await;
    let attempts = store.attempts(job).await.expect("attempts");
    assert_eq!(attempts[0].status, AttemptStatus::Lost);
    assert_eq!(attempts[1].status, AttemptStatus::Succeeded);
    // Attempt 1's log is kept, and ends with why it ended.
    let log = store.logs(attempts[0].id).await.expect("log");
    let text: String = log
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    assert!(text.contains("started"), "{text}");
    assert!(
        text.trim_end()
            .ends_with(&format!("engine `{victim}` stopped renewing it")),
        "{text}"
    );
}

/// Lines in `path` (0 while it does not exist).
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// A host paused (SIGSTOP) past its lease while its runner keeps running:
/// the job runs again elsewhere; when the host resumes, nothing it sends
/// is stored in the attempt it lost (no step, no log chunk after the lease
/// ended, no "cancelled", no duplicate chunk number), its runner is
/// stopped, it keeps running, and the lost attempt's log keeps what came
/// before the lease ended and ends with why it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_writes_nothing_more_and_stops_its_runner() {
    let lease = 6;
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("paused", lease).await;
    fleet.start_orchestrator("orch-a", 1);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 2).await;
    // Each attempt counts its ticks in a file of its own, outside the
    // engine: the runner's own witness of whether it still runs.
    let ticks = fleet.h.dir.path().join("ticks");
    std::fs::create_dir(&ticks).expect("ticks");
    let step = format!(
        "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo tick $i; echo $i >> {}/$SOLSTICE_ATTEMPT; sleep 0.25; done",
        ticks.display()
    );
    let sha = fleet.h.commit(&format!(
        "workflow {{\n  job id=\"ticker\" {{\n    step run=\"{step}\"\n  }}\n}}"
    ));
    fleet.push(&sha, "d-paused").await;
    let first = ticks.join("1");
    wait_until(
        &fleet,
        "attempt 1 ticks",
        Duration::from_secs(60),
        async || lines_in(&first) >= 4,
    )
    .await;
    fleet.start_orchestrator("orch-b", 1);
    fleet.wait_for_hosts(&store, 3).await;
    fleet.signal("orch-a", "STOP");
    let job = newest_jobs(&store).await.remove(0).id;
    wait_until(
        &fleet,
        "attempt 2 runs on orch-b",
        Duration::from_secs(60),
        async || lines_in(&ticks.join("2")) >= 2,
    )
    .await;
    // The stale host's runner ran on through the pause (its output waits
    // in the pipe to its paused host).
    assert!(lines_in(&first) >= 4);
    fleet.signal("orch-a", "CONT");
    // Its runner stops: the tick count stands still.
    let mut last = lines_in(&first);
    wait_until(
        &fleet,
        "the stale host's runner stops",
        Duration::from_secs(30),
        async || {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let now = lines_in(&first);
            let still = now == last && now < 40;
            last = now;
            still
        },
    )
    .await;
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(60))
        .await;
    assert!(fleet.alive("orch-a"), "{}", fleet.log_of("orch-a"));
    let attempts = store.attempts(job).await.expect("attempts");
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AttemptStatus::Lost, AttemptStatus::Succeeded],
        "{}",
        fleet.logs()
    );
    let (a1, a2) = (&attempts[0], &attempts[1]);
    assert_eq!(
        (a1.holder.as_str(), a2.holder.as_str()),
        ("orch-a", "orch-b")
    );
    // Attempt 1 keeps what came before its lease ended, nothing after,
    // and ends with why it was lost.
    let log = store.logs(a1.id).await.expect("log");
    let (reason, before) = log.split_last().expect("a log");
    let text: String = log
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    assert!(text.contains("tick 1\n"), "{text}");
    assert!(
        String::from_utf8_lossy(&reason.data).contains("lease expired: engine `orch-a`"),
        "{text}"
    );
    assert!(!text.contains("cancelled"), "{text}");
    let late: Vec<_> = before
        .iter()
        .filter(|c| c.at > a1.lease_expires_at)
        .map(|c| (c.seq, c.at, String::from_utf8_lossy(&c.data).into_owned()))
        .collect();
    assert!(
        late.is_empty(),
        "stored after the lease ended at {}: {late:?}",
        a1.lease_expires_at
    );
    for step in store.steps(a1.id).await.expect("steps") {
        assert!(
            step.finished_at.is_none_or(|t| t <= a1.lease_expires_at),
            "{step:?} ended after the lease ({})",
            a1.lease_expires_at
        );
    }
    let stale = fleet.log_of("orch-a");
    assert!(stale.contains("lost the lease"), "{stale}");
    assert!(!stale.contains("duplicate key"), "{stale}");
    assert!(!stale.contains(" ERROR "), "{stale}");
}

/// A small pseudo-random sequence (xorshift), seeded from the clock and
/// printed, so that a failing order of kills can be run again
/// (`SOLSTICE_TEST_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("SOLSTICE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("SOLSTICE_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The integration daemon killed (SIGKILL) at twenty random moments of a
/// run, the last time until the run has ended: every job's check run
/// reaches `completed` exactly once (one check run per job, its states
/// never going back), and nothing is left in the status outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_reported_once_and_in_order_through_twenty_kills_of_the_integration_daemon() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("outbox", 30).await;
    fleet.start_orchestrator("orch-1", 2);
    fleet.start_orchestrator("orch-2", 2);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 3).await;
    let jobs = 40;
    let sha = fleet.h.commit(&many(jobs, "sleep 2"));
    fleet.push(&sha, "d-outbox").await;
    wait_until(
        &fleet,
        "the run's jobs",
        Duration::from_secs(60),
        async || newest_jobs(&store).await.len() == jobs,
    )
    .await;
    let mut rng = Rng::new();
    for kill in 0..20 {
        tokio::time::sleep(Duration::from_millis(rng.below(700))).await;
        fleet.h.kill();
        if kill == 19 {
            // The run ends while the daemon is away.
            fleet
                .wait_for_the_run_to_end(&store, Duration::from_secs(180))
                .await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        }
        fleet
            .h
            .start_as("integration", &[("SOLSTICE_HOST_NAME", "integration")])
            .await;
    }
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(180))
        .await;
    wait_until(
        &fleet,
        "every job's final status on the forge",
        Duration::from_secs(60),
        async || fleet.h.completed(&sha) == jobs,
    )
    .await;
    wait_until(
        &fleet,
        "an empty status outbox",
        Duration::from_secs(30),
        async || {
            store
                .unsent_statuses(0, 10)
                .await
                .is_ok_and(|left| left.is_empty())
        },
    )
    .await;
    let checks = fleet.h.checks(&sha);
    let mut names: Vec<&str> = checks.iter().map(|(name, _, _)| name.as_str()).collect();
    names.sort_unstable();
    let runs = names.len();
    names.dedup();
    assert_eq!(
        (runs, names.len()),
        (jobs, jobs),
        "one check run per job: {checks:?}"
    );
    // A restart sends again only what it had sent but not yet marked
    // sent when it was killed (a pass's worth), not every job of the run
    // (each restart did that before: about 20 x 40 more).
    let sent: usize = fleet
        .h
        .forge
        .check_runs()
        .iter()
        .filter(|r| r.head_sha == sha)
        .map(|r| r.history.len())
        .sum();
    eprintln!("{sent} check run updates for {jobs} jobs through 20 kills");
    assert!(
        sent <= 3 * jobs + 5 * 20,
        "{sent} check run updates for {jobs} jobs"
    );
    let rank = |state: &str| match state {
        "queued" => 0,
        "in_progress" => 1,
        "completed" => 2,
        other => panic!("unknown state {other}"),
    };
    for (name, history, fields) in &checks {
        assert!(
            history.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
            "{name} went {history:?}"
        );
        assert_eq!(
            history.last().map(String::as_str),
            Some("completed"),
            "{name}"
        );
        assert_eq!(fields["conclusion"], "success", "{name}: {fields}");
    }
}

/// The running attempts `holder` holds now.
async fn held_by(store: &SqlStore, holder: &str) -> Vec<solstice_core::store::Attempt> {
    store
        .running_attempts()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.holder == holder)
        .collect()
}

/// Two of three hosts killed in a busy run: their jobs start again on the
/// third ahead of the backlog of new jobs (the retry lane), within the
/// lease, a reaper pass, and the time a slot takes to free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_jobs_start_again_ahead_of_the_backlog() {
    let lease: i64 = 6;
    let step_ms: i64 = 1500;
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("backlog", lease as u32).await;
    for host in ["orch-1", "orch-2", "orch-3"] {
        fleet.start_orchestrator(host, 2);
    }
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 4).await;
    let jobs = 48;
    let sha = fleet.h.commit(&many(jobs, "sleep 1.5"));
    fleet.push(&sha, "d-backlog").await;
    wait_until(
        &fleet,
        "orch-1 and orch-2 running jobs",
        Duration::from_secs(60),
        async || {
            !held_by(&store, "orch-1").await.is_empty()
                && !held_by(&store, "orch-2").await.is_empty()
        },
    )
    .await;
    fleet.kill("orch-1");
    fleet.kill("orch-2");
    let killed_at = solstice_core::engine::now_ms();
    let mut lost: Vec<_> = held_by(&store, "orch-1").await;
    lost.extend(held_by(&store, "orch-2").await);
    assert!(!lost.is_empty());
    let mut again = Vec::new();
    wait_until(
        &fleet,
        "the lost jobs start again",
        Duration::from_secs(120),
        async || {
            again.clear();
            for a in &lost {
                let attempts = store.attempts(a.job_id).await.unwrap_or_default();
                if let Some(next) = attempts.iter().find(|n| n.number == a.number + 1) {
                    again.push(next.clone());
                }
            }
            again.len() == lost.len()
        },
    )
    .await;
    // The lease, one reaper pass (a sixth of the lease), and 2.5 s of
    // slack (a loaded machine); plus the wait for a slot on the one host left (two slots,
    // each freed by a job's end): the lost jobs go two by two, each pair a
    // job's length after the one before. Before the retry lane they
    // waited behind the whole backlog (about 40 jobs: 30 s).
    let mut waits: Vec<i64> = again.iter().map(|a| a.started_at - killed_at).collect();
    waits.sort_unstable();
    let bounds: Vec<i64> = (0..waits.len() as i64)
        .map(|i| lease * 1000 + lease * 1000 / 6 + (i / 2 + 1) * step_ms + 2500)
        .collect();
    eprintln!(
        "{} lost jobs started again {waits:?} ms after the kill (bounds {bounds:?})",
        lost.len()
    );
    assert!(
        waits.iter().zip(&bounds).all(|(w, b)| w <= b),
        "lost jobs started again {waits:?} ms after the kill (bounds {bounds:?})"
    );
    // They went ahead of new work that was queued before them.
    let last = again.iter().map(|a| a.started_at).max().unwrap_or(0);
    let fresh_still_queued = newest_jobs(&store)
        .await
        .iter()
        .filter(|j| j.attempts == 0 && j.status == JobStatus::Queued)
        .count();
    let started_later = {
        let mut n = 0;
        for j in newest_jobs(&store).await {
            for a in store.attempts(j.id).await.unwrap_or_default() {
                if a.number == 1 && a.started_at > last {
                    n += 1;
                }
            }
        }
        n
    };
    assert!(
        fresh_still_queued + started_later > 0,
        "no new job was waiting: the test shows nothing"
    );
}

/// A host paused (SIGSTOP) with free slots while its job is lost: the job
/// goes to the other host as soon as that host has room, not to the
/// paused host's consumer (which the broker would push it to, and which
/// would hold it until the broker gave up on the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_hosts_lost_job_is_not_handed_back_to_it() {
    let lease = 6;
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("pausedroom", lease).await;
    // orch-a: room for two, serves `shared`; it takes the victim.
    fleet.start_orchestrator_with("orch-a", 2, &[("SOLSTICE_LABELS", "shared")]);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 2).await;
    let victim = fleet.h.commit(
        "workflow {\n  job id=\"victim\" runs_on=\"shared\" {\n    step run=\"echo started; sleep 12\"\n  }\n}",
    );
    fleet.push(&victim, "d-victim").await;
    wait_until(
        &fleet,
        "orch-a runs the victim",
        Duration::from_secs(60),
        async || !held_by(&store, "orch-a").await.is_empty(),
    )
    .await;
    let victim_job = newest_jobs(&store).await.remove(0).id;
    // orch-b: room for one, serves `shared` and `b`; kept busy with a job
    // only it can take until after the victim is lost.
    fleet.start_orchestrator_with("orch-b", 1, &[("SOLSTICE_LABELS", "shared,b")]);
    fleet.wait_for_hosts(&store, 3).await;
    let busy = fleet
        .h
        .commit("workflow {\n  job id=\"busy\" runs_on=\"b\" {\n    step run=\"sleep 10\"\n  }\n}");
    fleet.push(&busy, "d-busy").await;
    wait_until(
        &fleet,
        "orch-b is busy",
        Duration::from_secs(60),
        async || !held_by(&store, "orch-b").await.is_empty(),
    )
    .await;
    fleet.signal("orch-a", "STOP");
    let paused_at = solstice_core::engine::now_ms();
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let attempts = store.attempts(victim_job).await.unwrap_or_default();
            if let Some(second) = attempts.iter().find(|a| a.number == 2) {
                return second.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    fleet.signal("orch-a", "CONT");
    let second = result.unwrap_or_else(|_| {
        panic!(
            "the victim did not start again within a minute of the pause; logs:\n{}",
            fleet.logs()
        )
    });
    assert_eq!(second.holder, "orch-b");
    // As soon as both hold: the lease ran out and a reaper pass saw it,
    // and orch-b has room (its busy job ended); plus slack. Before the
    // retry lane, the broker pushed the job to orch-a's consumer, which
    // held it until the broker gave up on orch-a's connection.
    let busy_job = newest_jobs(&store).await.remove(0).id;
    let busy_end = store
        .attempts(busy_job)
        .await
        .expect("attempts")
        .first()
        .and_then(|a| a.finished_at)
        .unwrap_or(i64::MAX);
    let lost_at = paused_at + i64::from(lease) * 1000 + i64::from(lease) * 1000 / 6;
    let bound = lost_at.max(busy_end) + 2500 - paused_at;
    let waited = second.started_at - paused_at;
    eprintln!(
        "the victim started again on orch-b {waited} ms after orch-a was paused (bound {bound})"
    );
    assert!(
        waited <= bound,
        "{waited} ms after the pause (bound {bound})"
    );
}

/// Starts the broker's application and the database again when dropped,
/// also when the test fails.
struct Services;

impl Drop for Services {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("sh")
            .args(["-c", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start"])
            .output();
    }
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_rides_out_a_broker_restart_and_a_database_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let _services = Services;
    let mut fleet = Fleet::new("restarts", 30).await;
    fleet.start_orchestrator("orch-1", 3);
    fleet.start_orchestrator("orch-2", 3);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 3).await;
    let jobs = 150;
    let sha = fleet.h.commit(&many(jobs, "sleep 0.2"));
    fleet.push(&sha, "d-restarts").await;
    let done = async |store: &SqlStore| -> usize {
        newest_jobs(store)
            .await
            .iter()
            .filter(|j| j.status == JobStatus::Succeeded)
            .count()
    };
    wait_until(
        &fleet,
        "some jobs done",
        Duration::from_secs(120),
        async || done(&store).await >= 10,
    )
    .await;
    // The broker goes away for a few seconds.
    tokio::task::spawn_blocking(|| run_ok("rabbitmqctl", &["stop_app"]))
        .await
        .expect("join");
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(|| run_ok("rabbitmqctl", &["start_app"]))
        .await
        .expect("join");
    let before = done(&store).await;
    wait_until(
        &fleet,
        "jobs done after the broker came back",
        Duration::from_secs(120),
        async || done(&store).await >= before + 10,
    )
    .await;
    // The database restarts.
    tokio::task::spawn_blocking(|| {
        run_ok(
            "sh",
            &["-c", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main restart"],
        )
    })
    .await
    .expect("join");
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(300))
        .await;
    let run = store.recent_runs(1, None).await.expect("runs").remove(0);
    let all = store.jobs(run.id).await.expect("jobs");
    let unhappy: Vec<_> = all
        .iter()
        .filter(|j| j.status != JobStatus::Succeeded)
        .map(|j| (j.key.clone(), j.status, j.reason.clone()))
        .collect();
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{unhappy:?}\n{}",
        fleet.logs()
    );
    assert_eq!(all.len(), jobs);
    let mut successes = 0;
    for job in &all {
        let attempts = store.attempts(job.id).await.expect("attempts");
        let won = attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Succeeded)
            .count();
        assert_eq!(won, 1, "{}: {attempts:?}", job.key);
        successes += won;
    }
    assert_eq!(successes, jobs);
    // Every daemon is still there and reconnected: all three beat again.
    let after = solstice_core::engine::now_ms();
    wait_until(
        &fleet,
        "fresh heartbeats from every host",
        Duration::from_secs(30),
        async || store.hosts(after).await.map(|h| h.len()).unwrap_or(0) == 3,
    )
    .await;
}

/// A TCP relay to RabbitMQ that is "away" (takes connections and closes
/// them at once) until `up` is set.
async fn broker_relay(up: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay");
    let addr = listener.local_addr().expect("relay address");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if !up.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                }
            });
        }
    });
    addr
}

/// An orchestrator started while the broker is away, with queued jobs to
/// publish, waits for the broker (it used to exit 1), then runs them; and
/// it says what it serves without a PostgreSQL notice at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_started_while_the_broker_is_away_waits_for_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("late_broker", 30).await;
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 1).await;
    // A job queued with no orchestrator to take it.
    let sha = fleet
        .h
        .commit("workflow {\n  job id=\"waits\" {\n    step run=\"echo ran\"\n  }\n}");
    fleet.push(&sha, "d-late-broker").await;
    wait_until(
        &fleet,
        "the job is queued",
        Duration::from_secs(60),
        async || {
            newest_jobs(&store)
                .await
                .iter()
                .any(|j| j.status == JobStatus::Queued)
        },
    )
    .await;
    // The orchestrator's broker is away when it starts.
    let up = Arc::new(AtomicBool::new(false));
    let relay = broker_relay(up.clone()).await;
    let url = format!("amqp://guest:guest@{relay}/%2f");
    fleet.start_orchestrator_with("orch-1", 1, &[("SOLSTICE_QUEUE", &url)]);
    wait_until(
        &fleet,
        "orch-1 to say it waits for the queue",
        Duration::from_secs(60),
        async || {
            fleet.log_of("orch-1").contains(
                "the job queue is unreachable; publishing the queued jobs once it is back",
            )
        },
    )
    .await;
    let child = fleet.orchestrators.get_mut("orch-1").expect("orch-1");
    assert!(
        child.try_wait().expect("orch-1's status").is_none(),
        "orch-1 exited:\n{}",
        fleet.log_of("orch-1")
    );
    // The broker comes back: the job runs, with no restart.
    up.store(true, Ordering::SeqCst);
    fleet
        .wait_for_the_run_to_end(&store, Duration::from_secs(120))
        .await;
    let run = store.recent_runs(1, None).await.expect("runs").remove(0);
    assert_eq!(run.status, RunStatus::Succeeded, "{}", fleet.logs());
    let log = fleet.log_of("orch-1");
    assert!(log.contains("solstice is serving runners"), "{log}");
    assert!(
        !log.contains("listen="),
        "an orchestrator serves no HTTP: {log}"
    );
    assert!(
        !log.contains("already exists"),
        "PostgreSQL's notices are not logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_says_no_host_serves_a_label_and_every_host_is_full() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new("why", 30).await;
    fleet.start_orchestrator("orch-1", 1);
    fleet.start_orchestrator("orch-2", 1);
    let store = fleet.store().await;
    fleet.wait_for_hosts(&store, 3).await;
    let sha = fleet.h.commit(
        "workflow {\n  job id=\"busy\" {\n    matrix { n \"1\" \"2\" \"3\" \"4\"; }\n    step run=\"sleep 8\"\n  }\n  job id=\"lonely\" runs_on=\"nobody\" {\n    step run=\"true\"\n  }\n}",
    );
    fleet.push(&sha, "d-why").await;
    let mut run = None;
    wait_until(&fleet, "the run", Duration::from_secs(60), async || {
        run = store
            .recent_runs(1, None)
            .await
            .ok()
            .and_then(|r| r.first().map(|r| r.id));
        run.is_some()
    })
    .await;
    let run = run.expect("run");
    let jobs = store.jobs(run).await.expect("jobs");
    let lonely = jobs.iter().find(|j| j.key == "lonely").expect("lonely").id;
    let why = fleet
        .h
        .get_json(&format!("/api/v1/jobs/{lonely}/why"))
        .await;
    assert_eq!(why["reason"], "no-host", "{why}");
    assert!(
        why["text"]
            .as_str()
            .unwrap_or_default()
            .contains("no live host serves the label `nobody`"),
        "{why}"
    );
    // Two hosts of capacity 1, four jobs: once both are busy (as their
    // heartbeats say), a queued one waits because every host is full.
    let mut seen = Value::Null;
    wait_until(
        &fleet,
        "a job waiting for a full fleet",
        Duration::from_secs(60),
        async || {
            let Ok(jobs) = store.jobs(run).await else {
                return false;
            };
            for job in jobs
                .iter()
                .filter(|j| j.status == JobStatus::Queued && j.label == "default")
            {
                let why = fleet
                    .h
                    .get_json(&format!("/api/v1/jobs/{}/why", job.id))
                    .await;
                if why["reason"] == "full" {
                    seen = why;
                    return true;
                }
            }
            false
        },
    )
    .await;
    let text = seen["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("every host serving `default` is full"),
        "{seen}"
    );
    assert!(
        text.contains("orch-1 1/1") && text.contains("orch-2 1/1"),
        "{seen}"
    );
    assert!(
        seen["details"]["queue_depth"]
            .as_u64()
            .is_some_and(|d| d >= 1),
        "{seen}"
    );
}

#[test]
fn a_fleet_daemon_without_a_database_and_a_queue_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("solstice.kdl");
    std::fs::write(&config, "listen \"127.0.0.1:0\"\nstate-dir \"state\"\n").expect("write");
    for role in ["integration", "orchestrator"] {
        let out = Command::new(env!("CARGO_BIN_EXE_solstice"))
            .args([role, "--config"])
            .arg(&config)
            .env_remove("SOLSTICE_DATABASE")
            .env_remove("SOLSTICE_QUEUE")
            .output()
            .expect("solstice runs");
        assert_eq!(out.status.code(), Some(2), "{role}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("set `database` (PostgreSQL) and `queue` (RabbitMQ)"),
            "{role}: {err}"
        );
        assert!(
            !dir.path().join("state").exists(),
            "{role} started something"
        );
    }
}

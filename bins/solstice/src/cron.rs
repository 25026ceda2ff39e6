//! `cron` triggers. A push to a repository's default branch registers the
//! `on { cron ... }` schedules of its workflow (with that commit as the
//! one to build). Every few seconds each schedule's latest tick is
//! computed; a tick after the schedule was registered becomes a delivery
//! whose id names the tick, recorded like a webhook's: the inbox runs it,
//! a second recording of the same tick (another pass, a restart) is a
//! duplicate, and after a restart that spanned ticks the latest one runs,
//! once. Earlier missed ticks are not run one by one.

use std::sync::Arc;
use std::time::Duration;

use solstice_core::store::IntegrationStore;

use crate::daemon::{Daemon, chain};

/// How often the schedules are looked at.
const EVERY: Duration = Duration::from_secs(10);

/// The delivery id of one tick of one schedule: stable across restarts
/// and versions (FNV-1a of the schedule), and free of `/` (check runs'
/// external ids are `DELIVERY/JOB`).
pub fn tick_id(forge: &str, repository: &str, cron: &str, tick: i64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in forge
        .bytes()
        .chain([0])
        .chain(repository.bytes())
        .chain([0])
        .chain(cron.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("schedule-{tick}-{hash:016x}")
}

/// The current minute (Unix minutes), as far as the schedules know: for
/// tests only, `SOLSTICE_TEST_CRON_SHIFT_MINUTES` puts it that many
/// minutes ahead. A schedule registered now fires for later ticks only.
pub fn now_minute() -> i64 {
    let shift = std::env::var("SOLSTICE_TEST_CRON_SHIFT_MINUTES")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    solstice_core::engine::now_ms().div_euclid(60_000) + shift
}

/// Records the latest tick of every schedule, until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    loop {
        if let Err(e) = pass(&daemon).await {
            tracing::warn!(error = %e, "cannot look at the schedules");
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn pass(daemon: &Daemon) -> Result<(), String> {
    let now = now_minute();
    for s in daemon.store.schedules().await.map_err(|e| chain(&e))? {
        let Ok(schedule) = solstice_kdl::CronSchedule::parse(&s.cron) else {
            continue;
        };
        let Some(tick) = schedule.latest_at_or_before(now) else {
            continue;
        };
        if tick <= s.since {
            continue;
        }
        let id = tick_id(&s.forge, &s.repository, &s.cron, tick);
        let body = serde_json::json!({ "repository": s.repository, "cron": s.cron, "tick": tick });
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let new = daemon
            .store
            .record_delivery(
                &s.forge,
                &id,
                "schedule",
                &body,
                solstice_core::engine::now_ms(),
            )
            .await
            .map_err(|e| chain(&e))?;
        if new {
            tracing::info!(repository = %s.repository, cron = %s.cron, tick, "schedule fired");
            daemon.inbox.notify_one();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tick_id;

    #[test]
    fn tick_ids_are_stable_and_distinct() {
        assert_eq!(
            tick_id("github", "octo/a", "@daily", 5),
            tick_id("github", "octo/a", "@daily", 5)
        );
        assert_ne!(
            tick_id("github", "octo/a", "@daily", 5),
            tick_id("github", "octo/a", "@daily", 6)
        );
        assert_ne!(
            tick_id("github", "octo/a", "@daily", 5),
            tick_id("github", "octo/b", "@daily", 5)
        );
        assert!(!tick_id("github", "octo/a", "* * * * *", 5).contains('/'));
        // Pinned: an upgrade must not change the id of a tick.
        assert_eq!(
            tick_id("github", "octo/a", "@daily", 5),
            "schedule-5-5a7eb9c1cfc1ab8a"
        );
    }
}

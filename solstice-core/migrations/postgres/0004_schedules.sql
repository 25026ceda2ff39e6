-- Cron schedules of the repositories' workflows on their default branch:
-- only ticks after `since` (Unix minutes; when the schedule was first
-- seen) fire. `target` is the integration layer's JSON (what a run of it
-- reports to and checks out).
CREATE TABLE schedules (
    forge TEXT NOT NULL,
    repository TEXT NOT NULL,
    cron TEXT NOT NULL,
    target TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (forge, repository, cron)
);

-- The status outbox: every change of a job's status or attempt count, as
-- the forge must hear of it, written by the transaction that makes the
-- change (the trigger below), whichever host makes it. The integration
-- layer sends the entries in order and deletes them once the forge took
-- them; entries nobody sends are dropped after a retention (`finish_run`).
-- Times are Unix ms.
CREATE TABLE status_outbox (
    id BIGSERIAL PRIMARY KEY,
    run_id BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    job_key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    reason TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX status_outbox_at ON status_outbox (at);

-- One INSERT per statement, from the statement's transition tables (a
-- claim or an end of many jobs in one batch is one statement): a
-- row-level trigger cost a PL/pgSQL call per job.
CREATE FUNCTION status_outbox_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_outbox (run_id, job_id, job_key, status, attempts, reason, at)
    SELECT n.run_id, n.id, n.job_key, n.status, n.attempts, n.reason,
           (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
    FROM status_outbox_new n JOIN status_outbox_old o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status OR o.attempts IS DISTINCT FROM n.attempts
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_status_outbox AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS status_outbox_old NEW TABLE AS status_outbox_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION status_outbox_write();

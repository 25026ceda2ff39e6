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

CREATE FUNCTION status_outbox_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_outbox (run_id, job_id, job_key, status, attempts, reason, at)
    VALUES (NEW.run_id, NEW.id, NEW.job_key, NEW.status, NEW.attempts, NEW.reason,
            (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_status_outbox AFTER UPDATE OF status, attempts ON jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts)
    EXECUTE FUNCTION status_outbox_write();

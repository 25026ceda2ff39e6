-- Runs, jobs, attempts, steps, log chunks. Times are Unix milliseconds.
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES runs(id),
    position BIGINT NOT NULL,
    job_key TEXT NOT NULL,
    label TEXT NOT NULL,
    spec TEXT NOT NULL,
    needs TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    max_attempts BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    UNIQUE (run_id, job_key)
);

CREATE INDEX jobs_run_status ON jobs (run_id, status);

CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    number BIGINT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    holder TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    token_hash TEXT NOT NULL,
    token_used BIGINT NOT NULL DEFAULT 0,
    vm_id TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    UNIQUE (job_id, number)
);
CREATE UNIQUE INDEX attempts_token ON attempts (token_hash);
CREATE INDEX attempts_running ON attempts (status, lease_expires_at);

CREATE TABLE steps (
    attempt_id BIGINT NOT NULL REFERENCES attempts(id),
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (attempt_id, idx)
);

CREATE TABLE log_chunks (
    attempt_id BIGINT NOT NULL REFERENCES attempts(id),
    seq BIGINT NOT NULL,
    step BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    data BYTEA NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (attempt_id, seq)
);

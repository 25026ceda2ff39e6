-- The fleet: every daemon upserts its row at each heartbeat. `labels` is
-- comma-separated (a label has no comma); times are Unix ms.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    running BIGINT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

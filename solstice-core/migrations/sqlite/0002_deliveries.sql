-- Webhook deliveries: recorded before they are acknowledged, processed
-- after. (forge, id) is the forge's delivery id: a redelivery is refused.
CREATE TABLE deliveries (
    forge TEXT NOT NULL,
    id TEXT NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    run_id BIGINT,
    target TEXT,
    PRIMARY KEY (forge, id)
);
CREATE INDEX deliveries_state ON deliveries (state, received_at);
CREATE INDEX deliveries_run ON deliveries (run_id);
CREATE INDEX runs_source ON runs (source);

-- Jobs, and the transactional outbox: a job row with `outbox = true` is committed but not yet
-- published to RabbitMQ. One row per job keeps the accept path to a single-row insert.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress         double precision NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    result           jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- The request's trace, so the worker joins it however late the relay publishes.
    trace_id         text NOT NULL,
    traceparent      text,
    outbox           boolean NOT NULL DEFAULT true,
    cancel_requested boolean NOT NULL DEFAULT false
);

CREATE INDEX jobs_outbox ON jobs (created_at) WHERE outbox;
CREATE INDEX jobs_newest ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_newest ON jobs (status, created_at DESC, id DESC);

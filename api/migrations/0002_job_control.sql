-- Job control: delayed jobs, re-drive, cancels that reach workers started later, idempotent
-- submit, and retention.

-- `scheduled`: accepted with a `run_at` in the future; the relay publishes it when it is due.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled'));

-- When the job may run: the relay publishes an outbox row only once `run_at` has passed.
ALTER TABLE jobs ADD COLUMN run_at timestamptz NOT NULL DEFAULT now();
UPDATE jobs SET run_at = created_at;
DROP INDEX jobs_outbox;
CREATE INDEX jobs_outbox ON jobs (run_at) WHERE outbox;

-- A re-drive starts a new series of attempts: messages and events carry the series number, so
-- a late event of an earlier series changes nothing. `history` keeps each earlier series' end.
ALTER TABLE jobs ADD COLUMN generation integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN history jsonb NOT NULL DEFAULT '[]';

-- A cancel whose broadcast is not yet confirmed by the broker; the relay publishes it.
ALTER TABLE jobs ADD COLUMN cancel_outbox boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_cancel_outbox ON jobs (id) WHERE cancel_outbox;

-- Retention deletes finished jobs oldest first.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- `Idempotency-Key` of `POST /jobs`: the key, a fingerprint of the request it came with, and the
-- job it created. Checked at commit, so the key and its job are inserted in one transaction in
-- either order; deleting a job (retention) deletes its key.
CREATE TABLE idempotency_keys (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

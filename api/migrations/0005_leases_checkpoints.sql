-- Long jobs: an attempt holds a lease that its worker's heartbeats renew (the api gives the
-- attempt up when it lapses), saves checkpoints the next attempt resumes from, and a job's
-- payload carries the version of its kind it was accepted under.

-- The version of the kind's payload the job was accepted under (1 for every job before this).
ALTER TABLE jobs ADD COLUMN payload_version integer NOT NULL DEFAULT 1;
-- Failed attempts of this generation (the retry budget counts these, not attempts: an attempt
-- handed back at a shutdown costs nothing).
ALTER TABLE jobs ADD COLUMN failures integer NOT NULL DEFAULT 0;
UPDATE jobs SET failures = greatest(attempts - 1, 0);
-- Attempts up to this one were given up (lease lapsed) or handed back: their events are stale.
ALTER TABLE jobs ADD COLUMN superseded integer NOT NULL DEFAULT 0;
-- The running attempt's last sign of life and when its lease lapses. NULL for an attempt
-- started by a worker from before leases: the broker still holds its delivery, and redelivers
-- it if that worker dies. No index: a heartbeat updates these, and an index on them would make
-- every heartbeat a non-HOT update; the reaper reads running jobs by status.
ALTER TABLE jobs ADD COLUMN heartbeat_at timestamptz;
ALTER TABLE jobs ADD COLUMN lease_expires_at timestamptz;
-- The last checkpoint: what the handler saved, which attempt saved it, and when.
ALTER TABLE jobs ADD COLUMN checkpoint jsonb;
ALTER TABLE jobs ADD COLUMN checkpoint_attempt integer;
ALTER TABLE jobs ADD COLUMN checkpoint_at timestamptz;
-- The running (or last) attempt's span, which the next attempt's trace links to.
ALTER TABLE jobs ADD COLUMN attempt_traceparent text;

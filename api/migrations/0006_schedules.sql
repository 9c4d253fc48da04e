-- Periodic schedules: a job of a kind, made at each fire time of a cron expression or a fixed
-- interval. The next fire time lives here, never only in memory: a restart (or a new leader)
-- picks up where the last fire left off, and applies the schedule's policy to what it missed.
CREATE TABLE schedules (
    name text PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    payload_version integer NOT NULL,
    -- Exactly one of: a cron expression (5 fields, or 6 with seconds first), or an interval.
    cron text,
    interval_secs bigint CHECK (interval_secs > 0),
    -- The IANA zone the cron expression is read in (an interval ignores it).
    time_zone text NOT NULL,
    -- What a fire time more than the misfire grace late does: 'skip' (nothing), 'one' (one job
    -- for all of them), 'all' (a job each, up to a bound).
    missed text NOT NULL CHECK (missed IN ('skip', 'one', 'all')),
    enabled boolean NOT NULL DEFAULT true,
    -- Declared in the service's code and synced at start-up: the api may pause and resume it,
    -- not change or delete it.
    declared boolean NOT NULL DEFAULT false,
    next_fire_at timestamptz NOT NULL,
    last_fire_at timestamptz,
    fires bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_cron_or_interval CHECK ((cron IS NULL) <> (interval_secs IS NULL))
);

-- The scheduler's one query: enabled schedules by next fire time.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;

-- The schedule and fire time that made a job. Unique: two leaders, or a tick run twice, make
-- one job per fire time. No foreign key: a deleted schedule's jobs keep their record.
ALTER TABLE jobs ADD COLUMN schedule_name text;
ALTER TABLE jobs ADD COLUMN fire_at timestamptz;
CREATE UNIQUE INDEX jobs_schedule_fire ON jobs (schedule_name, fire_at)
    WHERE schedule_name IS NOT NULL;

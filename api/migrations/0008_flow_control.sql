-- Flow control: priorities, concurrency and rate limits across every worker, unique jobs,
-- snooze, and pausing a kind. The relay decides what reaches RabbitMQ, so that is where the
-- limits hold for the whole fleet; what waits, waits here, in the outbox.

-- 0 (default) to 9: higher is published first when work waits in the outbox (limits, a pause,
-- a relay behind); also the AMQP priority (RabbitMQ 4's quorum queues deliver 5–9 before 0–4).
ALTER TABLE jobs ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9);
-- What the per-key limits of its kind count it under (e.g. a customer id).
ALTER TABLE jobs ADD COLUMN concurrency_key text;
-- Times the handler asked to run later ("snooze") without spending an attempt.
ALTER TABLE jobs ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
-- A unique job's claim: no other job of the same claim may be inserted while it holds it. Given
-- up when the job ends, or when `unique_until` passes if the kind keeps it for a period.
ALTER TABLE jobs ADD COLUMN unique_key text;
ALTER TABLE jobs ADD COLUMN unique_until timestamptz;
CREATE UNIQUE INDEX jobs_unique ON jobs (unique_key) WHERE unique_key IS NOT NULL;

-- The outbox carries the job's priority (its order), and why an entry waits past its run_at:
-- `held` = 'concurrency' (no free slot; woken when one frees), 'rate' (a token is reserved for
-- it at its run_at) or 'paused' (its kind is paused; woken at resume). A held entry's kind and
-- key, and its turn in its key's line, let a freed slot go to the key that has waited longest
-- in turns, not to the key that submitted most.
ALTER TABLE outbox ADD COLUMN priority smallint NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN held text CHECK (held IN ('concurrency', 'rate', 'paused'));
ALTER TABLE outbox ADD COLUMN held_kind text;
ALTER TABLE outbox ADD COLUMN held_key text;
ALTER TABLE outbox ADD COLUMN turn integer;
CREATE INDEX outbox_order ON outbox (priority DESC, run_at);
CREATE INDEX outbox_held_key ON outbox (held_kind, held_key, priority DESC, turn)
    WHERE held = 'concurrency';
CREATE INDEX outbox_held_kind ON outbox (held_kind, priority DESC, turn, run_at)
    WHERE held = 'concurrency';

-- A concurrency slot: a job of a limited kind published and not ended. Taken by the relay in
-- the transaction that takes the job out of the outbox; given back by the trigger below when
-- the job leaves queued/running (it ended, is waiting for a retry, or its lease lapsed), so a
-- worker that dies holding one cannot leak it. Deleting a job gives it back too.
CREATE TABLE slots (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    kind text NOT NULL,
    key text NOT NULL DEFAULT '',
    taken_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX slots_kind_key ON slots (kind, key);

-- A rate limit's state (GCRA): the theoretical arrival time of the next job, for the kind's
-- limit (`per_key` false, `key` '') or one key's.
CREATE TABLE rate_limits (
    kind text NOT NULL,
    per_key boolean NOT NULL,
    key text NOT NULL,
    tat timestamptz NOT NULL,
    PRIMARY KEY (kind, per_key, key)
);

-- Paused kinds: the relay holds their jobs in the outbox until resumed.
CREATE TABLE paused_kinds (
    kind text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- A job that leaves queued/running gives back its slot and, under the kind's lock that the
-- relay takes to count slots (so a relay deciding at that moment cannot miss it), wakes the
-- next held entries: the next of its key, and the next of its kind (highest priority, then the
-- lowest turn: keys take turns, so one key with many jobs does not hold the others back).
-- SKIP LOCKED: an entry a relay has locked is being decided by that relay already.
CREATE FUNCTION jobs_free_slot() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    freed slots%ROWTYPE;
BEGIN
    DELETE FROM slots WHERE job_id = NEW.id RETURNING * INTO freed;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('jobstack.flow:' || freed.kind, 0));
    UPDATE outbox SET run_at = now(), held = NULL
     WHERE job_id = (SELECT job_id FROM outbox
                      WHERE held = 'concurrency' AND held_kind = freed.kind AND held_key = freed.key
                      ORDER BY priority DESC, turn LIMIT 1 FOR UPDATE SKIP LOCKED);
    UPDATE outbox SET run_at = now(), held = NULL
     WHERE job_id = (SELECT job_id FROM outbox
                      WHERE held = 'concurrency' AND held_kind = freed.kind
                      ORDER BY priority DESC, turn, run_at LIMIT 1 FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_free_slot
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'running') AND NEW.status NOT IN ('queued', 'running'))
    EXECUTE FUNCTION jobs_free_slot();

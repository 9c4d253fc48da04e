-- The outbox becomes a table of its own: an entry is inserted with its job and deleted once the
-- broker confirmed the publish. Before, the job row was its own outbox entry (`jobs.outbox`), and
-- marking it published was an UPDATE of an indexed column: a new row version and an entry in
-- every index of `jobs`, per job. A DELETE from a small table writes no index entries, and the
-- relay no longer writes to `jobs` at all (measured: README "How a job travels").
CREATE TABLE outbox (
    job_id uuid PRIMARY KEY,
    run_at timestamptz NOT NULL
);
CREATE INDEX outbox_due ON outbox (run_at);

INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM jobs WHERE outbox;
DROP INDEX jobs_outbox;
ALTER TABLE jobs DROP COLUMN outbox;

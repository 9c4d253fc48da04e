-- Workflows: jobs that run after other jobs (a DAG submitted in one request). A job waits, as
-- `scheduled` with no outbox entry, while `pending_deps` > 0; the transaction that records a
-- dependency's end releases it (the trigger below), so no task polls for ready jobs.
CREATE TABLE workflows (
    id uuid PRIMARY KEY,
    name text,
    trace_id text NOT NULL DEFAULT '',
    -- Set by a cancel of the whole workflow: its final status is then `cancelled`.
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_created ON workflows (created_at DESC, id DESC);

-- A workflow's job: its workflow, its key in it, and how many dependencies it still waits for.
-- `blocked_by`: the dependency whose failure cancelled it (a re-drive of that one resumes it).
ALTER TABLE jobs ADD COLUMN workflow_id uuid REFERENCES workflows (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN workflow_key text;
ALTER TABLE jobs ADD COLUMN pending_deps integer NOT NULL DEFAULT 0 CHECK (pending_deps >= 0);
ALTER TABLE jobs ADD COLUMN blocked_by uuid;
CREATE UNIQUE INDEX jobs_workflow_key ON jobs (workflow_id, workflow_key) WHERE workflow_id IS NOT NULL;

-- An edge of a workflow: `job_id` runs after `depends_on` ended; `on_failure` says what a failed
-- or cancelled `depends_on` does to it: 'fail' cancels it (and what depends on it), 'ignore'
-- runs it anyway.
CREATE TABLE job_dependencies (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    on_failure text NOT NULL CHECK (on_failure IN ('fail', 'ignore')),
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_dependencies_depends_on ON job_dependencies (depends_on);

-- When a workflow's job reaches a final status: each dependent that waits for it waits for one
-- fewer (a success, or a failure it ignores) and is queued with an outbox entry when none is left;
-- a dependent under 'fail' is cancelled, which fires this trigger for its own dependents. In the
-- transaction that wrote the final status, whichever path wrote it (an event, a lapsed lease, a
-- cancel).
CREATE FUNCTION jobs_release_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH released AS (
        UPDATE jobs AS j
           SET pending_deps = j.pending_deps - 1,
               status = CASE WHEN j.pending_deps = 1 THEN 'queued'::job_status ELSE j.status END,
               run_at = CASE WHEN j.pending_deps = 1 THEN now() ELSE j.run_at END
          FROM job_dependencies AS d
         WHERE d.depends_on = NEW.id AND j.id = d.job_id
           AND j.status = 'scheduled' AND j.pending_deps > 0
           AND (NEW.status = 'succeeded' OR d.on_failure = 'ignore')
        RETURNING j.id, j.pending_deps, j.run_at
    )
    INSERT INTO outbox (job_id, run_at)
    SELECT id, run_at FROM released WHERE pending_deps = 0
    ON CONFLICT (job_id) DO NOTHING;

    IF NEW.status <> 'succeeded' THEN
        UPDATE jobs AS j
           SET status = 'cancelled', finished_at = now(), pending_deps = 0, blocked_by = NEW.id,
               error = format('not run: its dependency %s was %s', NEW.workflow_key, NEW.status)
          FROM job_dependencies AS d
         WHERE d.depends_on = NEW.id AND j.id = d.job_id AND d.on_failure = 'fail'
           AND j.status = 'scheduled' AND j.pending_deps > 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_release_dependents
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.workflow_id IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION jobs_release_dependents();

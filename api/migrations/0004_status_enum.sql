-- One source for the status names: a PostgreSQL enum whose labels are `lifecycle::Status`'s (a
-- test compares the two). A name PostgreSQL does not know is refused when a statement binds or
-- writes it, and a label the api does not know fails to decode: neither is ever read as another.
CREATE TYPE job_status AS ENUM ('scheduled', 'queued', 'running', 'succeeded', 'failed', 'cancelled');
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ALTER COLUMN status DROP DEFAULT;
ALTER TABLE jobs ALTER COLUMN status TYPE job_status USING status::job_status;
ALTER TABLE jobs ALTER COLUMN status SET DEFAULT 'queued';

-- A job has ended exactly when it has an end time: retention selects finished jobs by
-- `finished_at` alone (on its index), and this keeps the two from ever disagreeing.
ALTER TABLE jobs ADD CONSTRAINT jobs_finished_iff_final
    CHECK ((finished_at IS NOT NULL) = (status IN ('succeeded', 'failed', 'cancelled')));

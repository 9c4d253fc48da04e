-- A job's state changes (published, started, ended, retried) are HOT updates: PostgreSQL writes
-- the row's new version beside the old one on its page and touches no index, instead of adding
-- an entry to each of the table's indexes. It can only do that when the update changes no
-- indexed column (for PostgreSQL 15, one named in an index's predicate counts too) and the page
-- has room. Before this, every update changed `status` (in `jobs_status_newest`) and the last
-- one `finished_at` (in `jobs_finished`): 0 % of the drain's updates were HOT, and each added
-- an entry to `jobs_pkey`, `jobs_newest`, `jobs_status_newest` and `jobs_client_newest` (and the
-- last to `jobs_finished`).
--
-- What those two indexes served is served otherwise:
-- - Running attempts (the lease reaper, the running gauge) are the `running` table's rows: a
--   job is in it exactly while its status is running. The statement that writes a state
--   change (store/events.rs `write`, the only one that starts or ends an attempt) adds and
--   removes them; an attempt that starts and ends between two writes never enters it.
-- - Retention walks `jobs_newest`: a job finished before a time was created before it.
-- - The explorer's status filter walks `jobs_newest` and filters, which stops once the page is
--   full: quick for the statuses most jobs have, a longer walk for a rare one in a large table
--   (retention bounds it). A bulk re-drive (an operator's action) scans.
DROP INDEX jobs_status_newest;
DROP INDEX jobs_finished;

-- Room on each page for one more version of each of its rows: a job's row is written once
-- more after its insert when its start and end are applied together (the usual case for short
-- jobs), and the page is pruned of old versions as it is read. At 80 the drain's updates were
-- 59 % HOT; at 50, 98 %. Applies to pages written from now on.
ALTER TABLE jobs SET (fillfactor = 50);

CREATE TABLE running (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO running (job_id) SELECT id FROM jobs WHERE status = 'running';
-- Statistics from the start: a table never analyzed is planned as ten pages of rows, and a
-- join from it might then scan `jobs` instead of looking each job up.
ANALYZE running;

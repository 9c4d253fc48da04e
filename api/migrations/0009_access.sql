-- Access control: API keys (stored as SHA-256 digests of high-entropy secrets, never the secret),
-- the console's sessions, the client that submitted each job, and the audit trail of every
-- mutating action, written in the transaction of its effect.

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    -- The client the key speaks for: jobs it submits carry this name; quotas count per name.
    name text NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    role text NOT NULL CHECK (role IN ('submitter', 'viewer', 'operator', 'admin')),
    -- sha256(secret): a lookup by digest is an index probe, and a leaked table reveals no key.
    digest bytea NOT NULL UNIQUE,
    -- Shown in lists so a person can tell keys apart: the secret's first characters.
    hint text NOT NULL,
    -- Per-client quotas at the edge; NULL takes the api's defaults.
    submit_rate double precision CHECK (submit_rate >= 0.001),
    max_in_flight integer CHECK (max_in_flight > 0),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_name ON api_keys (name);

-- A console login: a random token in an HttpOnly cookie (its digest here) bound to the key that
-- logged in; revoking the key ends its sessions.
CREATE TABLE sessions (
    digest bytea PRIMARY KEY,
    key_id uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- Every console form and htmx request carries it; a cross-site page cannot read it.
    csrf text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

ALTER TABLE jobs ADD COLUMN client text;
CREATE INDEX jobs_client_newest ON jobs (client, created_at DESC, id DESC);
ALTER TABLE workflows ADD COLUMN client text;

CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    -- The key's client name and role at the time (the key may be revoked since).
    actor text NOT NULL,
    role text NOT NULL,
    key_id uuid,
    -- e.g. job.cancel, jobs.redrive, kind.pause, schedule.create, key.revoke
    action text NOT NULL,
    -- The object acted on: a job id, a kind, a schedule's name, a key's id, or a filter.
    target text NOT NULL,
    -- The jobs it changed, when it changed jobs.
    jobs uuid[] NOT NULL DEFAULT '{}',
    detail jsonb NOT NULL DEFAULT '{}',
    trace_id text NOT NULL DEFAULT ''
);
CREATE INDEX audit_newest ON audit (id DESC);

-- The read-only role Grafana's "Jobs DB" datasource logs in as (uid jobs-db, user grafana_reader in
-- observability/grafana/provisioning/datasources/datasources.yaml).
--
-- Who runs it, when: the postgres image's entrypoint, on the first start of an empty data directory
-- only, after initdb and after creating POSTGRES_DB, as
--   psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname "$POSTGRES_DB" -f <this file>
-- over the Unix socket of a temporary server, so as the role postgres in the database jobstack.
-- Source: docker-library/postgres 5ec8931 (the postgres:17.6 build) 17/trixie/docker-entrypoint.sh,
-- docker_process_init_files and docker_process_sql (observability/images.yml, POSTGRES_IMAGE).
-- tests/stack/check_explorer.py runs this same file against real databases (with -v reader=<its own
-- role>) and then every query of the Jobs explorer dashboard as that role.
--
-- The jobs table does not exist yet: the api creates it when it starts and migrates, connected as
-- postgres (DATABASE_URL in docker-compose.yml). Hence the default privileges below.

-- psql substitutes no environment variables in a script; \getenv (psql 15+, the image's psql is 17)
-- copies the password compose passes to the container (GRAFANA_DB_PASSWORD) into a psql variable.
\getenv reader_password GRAFANA_DB_PASSWORD
\if :{?reader_password}
\else
  \set reader_password ''
\endif
SELECT :'reader_password' = '' AS reader_password_missing \gset
\if :reader_password_missing
  -- ON_ERROR_STOP: the entrypoint stops here and the container exits, naming the cause.
  DO $$ BEGIN RAISE EXCEPTION 'GRAFANA_DB_PASSWORD is unset or empty: the Grafana reader role needs a password'; END $$;
\endif

-- The role's name; tests pass their own (-v reader=...) so parallel runs never share a role.
\if :{?reader}
\else
  \set reader grafana_reader
\endif

-- Idempotent, so the same file also serves an existing database (see README, "Jobs explorer").
SELECT format('CREATE ROLE %I', :'reader') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'reader_password';
-- Behind the grants, a second guard: Grafana runs whatever SQL a dashboard or Explore sends, so
-- every transaction of this role starts read-only.
ALTER ROLE :"reader" SET default_transaction_read_only = on;

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
GRANT USAGE ON SCHEMA public TO :"reader";
-- Tables postgres creates later in this database (the api's migrations) are readable as they appear.
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
-- Tables that exist already (a database the api has migrated); nothing at the image's first start.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";

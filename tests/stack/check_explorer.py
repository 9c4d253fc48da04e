#!/usr/bin/env python3
"""The "Jobs explorer" dashboard's SQL, run against a real PostgreSQL as Grafana would run it, as
the read-only role that observability/postgres/initdb/10-grafana-reader.sql creates.

  --seed           a scratch database: the init file first (as at the image's first start), then
                   api/migrations/*.sql, then jobs in every state; dropped afterwards
  --database NAME  an existing database the real api migrated (check_live.py passes its own, with
                   --role/--password of the role it made before the api started, --api and --log)

Every template-variable and panel query is expanded (variables as Grafana's frontend does, then the
SQL macros as its PostgreSQL backend does, both ported below with their upstream sources), run as
the role, and must return a row; "Jobs" must return a row for each status on its own. Each table's
links are rendered for its first row (Grafana's data-link variables) and decoded as Explore decodes
them; with --api the JSON link is fetched, with --log the Loki link's line filter is looked for in
the services' log lines. The role must not be able to write. Prints `ok - …` / `not ok - …` lines;
a role or database it made is removed on exit, also on failure.
"""
import argparse
import atexit
import csv
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

from grafana_expand import Unsupported, backend, custom_options, explore_pane, frontend, render_link, time_range
from stacklib import read_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "observability", "grafana", "dashboards", "jobstack-explorer.json")
DATASOURCES = os.path.join(ROOT, "observability", "grafana", "provisioning", "datasources", "datasources.yaml")
INIT_SQL = os.path.join(ROOT, "observability", "postgres", "initdb", "10-grafana-reader.sql")
MIGRATIONS = os.path.join(ROOT, "api", "migrations")
PG = {"host": "127.0.0.1", "port": "5432"}
failed = 0


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"ok - explorer: {name}" if ok else f"not ok - explorer: {name}: {detail}", flush=True)


def psql(sql, db, user="postgres", password=None, args=(), env=None):
    env = dict(os.environ, PGAPPNAME="jobs-explorer-check", **(env or {}))
    if password is not None:
        env["PGPASSWORD"] = password
    cmd = ["psql", "-X", "-h", PG["host"], "-p", PG["port"], "-U", user, "-d", db, "-v", "ON_ERROR_STOP=1", *args]
    return subprocess.run(cmd + (["-c", sql] if sql else []), capture_output=True, text=True, timeout=60, env=env)


def rows(r):
    """psql --csv output: (header, rows)."""
    table = list(csv.reader(io.StringIO(r.stdout)))
    return (table[0], table[1:]) if table else ([], [])


# ------------------------------------------------------------------ the role (the compose init file)
def install_reader(db, role, password):
    """Runs the init file as the image's entrypoint does (psql -v ON_ERROR_STOP=1 as postgres, the
    password in the environment); only the role's name is ours (-v reader=…), so runs never share it."""
    return psql(None, db, args=["--no-password", "-v", f"reader={role}", "-f", INIT_SQL], env={"GRAFANA_DB_PASSWORD": password})


def drop_reader(role, db=None):
    """DROP OWNED revokes what the file granted in `db` (needed while that database lives on)."""
    out = [psql(f'DROP OWNED BY "{role}"', db)] if db else []
    return out + [psql(f'DROP ROLE IF EXISTS "{role}"', "postgres")]


_sessions = {}


def console_session(api):
    """A console session cookie for `api`, logged in with the key in $API_KEY (once per api)."""
    if api not in _sessions:
        key = os.environ.get("API_KEY", "")
        req = urllib.request.Request(f"{api}/ui/login", data=urllib.parse.urlencode({"key": key}).encode(),
                                     method="POST")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **kw):
                return None

        try:
            urllib.request.build_opener(NoRedirect).open(req, timeout=10)
            raise OSError("the console login did not redirect")
        except urllib.error.HTTPError as e:  # the 303 of a login that worked
            cookie = (e.headers.get("set-cookie") or "").split(";")[0]
            if e.code != 303 or not cookie:
                raise OSError(f"the console login with $API_KEY answered {e.code}") from e
        _sessions[api] = cookie
    return _sessions[api]


def check_links(title, header, first, overrides, ctx, args):
    """Each override names a returned column; each link, rendered for the first row, leads where it says."""
    cols = [o["matcher"]["options"] for o in overrides]
    check(f"panel {title!r}: its overrides name columns its query returns ({', '.join(cols)})",
          all(o["matcher"]["id"] == "byName" for o in overrides) and set(cols) <= set(header), f"columns: {header}")
    for o in overrides:
        col = o["matcher"]["options"]
        links = next((p["value"] for p in o["properties"] if p["id"] == "links"), [])
        if col not in header or not links or not first:
            continue
        value = first[header.index(col)]
        for link in links:
            name = f"panel {title!r}: link {link['title']!r} on {col}={value}"
            try:
                href = render_link(link["url"], value, ctx["from"], ctx["to"], args.api or ctx["api_url"])
                if href.startswith("/explore"):
                    pane = explore_pane(href)
                    q = pane["queries"][0]
                    problems = [] if pane["datasource"] in ctx["uids"] and q["datasource"]["uid"] == pane["datasource"] \
                        else [f"datasource {pane['datasource']!r} not provisioned ({sorted(ctx['uids'])})"]
                    if pane["datasource"] == "jaeger":  # pkg/tsdb/jaeger/querydata.go: no queryType = trace by id
                        problems += [] if (q.get("query") == value and "queryType" not in q and re.fullmatch(r"[0-9a-f]{32}", value)) \
                            else [f"want a trace-id query of a 32-hex id, got {q}"]
                    if pane["datasource"] == "loki":  # the same stream selector as the trace -> logs query
                        needle = re.search(r"\|= `([^`]*)`", q.get("expr", ""))
                        problems += [] if needle and needle.group(1) == value else [f"want a line filter on {value}, got {q.get('expr')}"]
                        problems += [] if q.get("expr", "").split(" |")[0] == ctx["selector"] else [f"selector is not {ctx['selector']}"]
                        if args.log:  # the filter spans every service: one matching line anywhere is enough
                            hits = {os.path.basename(f): sum(value in ln for ln in open(f, errors="replace")) for f in args.log}
                            problems += [] if sum(hits.values()) else [f"no log line contains {value}: {hits}"]
                    check(f"{name} opens Explore on {pane['datasource']}: {json.dumps(q)[:160]}", not problems, "; ".join(problems))
                elif args.api:
                    # The console's page of that row, as a logged-in browser gets it.
                    req = urllib.request.Request(href, headers={"cookie": console_session(args.api)})
                    with urllib.request.urlopen(req, timeout=10) as r:
                        page = r.read().decode("utf-8", "replace")
                        landed = r.geturl()
                    check(f"{name}: GET {href} answers the console's page of that row",
                          landed == href and value in page and "<html" in page, f"{landed}: {page[:200]}")
                else:
                    resource = "workflows" if "/workflows/" in link["url"] else "jobs"
                    check(f"{name} -> {href} (api_url's default is the published API_PORT; not fetched: no --api)",
                          href == f"{ctx['api_url']}/ui/{resource}/{value}", href)
            except (Unsupported, ValueError, KeyError, OSError) as e:
                check(name, False, f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------ the checks
SCHEDULED_HINT = " (no job waits for its run_at: does this api take POST /jobs with delay_ms or run_at yet?)"


def run_checks(db, role, password, args):
    dash = json.load(open(DASHBOARD))
    provisioned = {d["uid"]: d for d in yaml.safe_load(open(DATASOURCES))["datasources"]}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    t_from, t_to = time_range(dash, int(time.time() * 1000))
    # The Loki links use the stream selector of the provisioned trace -> logs query.
    ctx = {"uids": set(provisioned), "from": t_from, "to": t_to, "api_url": variables["api_url"]["query"],
           "selector": provisioned["jaeger"]["jsonData"]["tracesToLogsV2"]["query"].split(" |")[0]}
    port = read_env().get("API_PORT")
    check(f"$api_url defaults to the published api ({ctx['api_url']})", ctx["api_url"] == f"http://127.0.0.1:{port}", f".env API_PORT={port}")

    def run(label, raw, values):
        """Expands like Grafana and runs as the role: (sql as run, header, rows), or None after a `not ok`."""
        try:
            sql = backend(frontend(raw, values), t_from, t_to)
        except Unsupported as e:
            check(label, False, f"uses {e}")
            return None
        r = psql(sql, db, role, password, ["--csv"])
        if r.returncode:
            check(label, False, f"{r.stderr.strip()}\n#   as run: {' '.join(sql.split())}")
            return None
        return (" ".join(sql.split()), *rows(r))

    # Variables first, as the dashboard loads: their values feed the panels (all at "All").
    values = {}
    for name, v in variables.items():
        if v["type"] == "custom":
            opts = custom_options(v["query"])
        elif v["type"] == "query":
            res = run(f"variable ${name}", v["query"], {})
            if res is None:
                return
            opts = list(dict.fromkeys(r[0] for r in res[2]))  # SQLVariableSupport: the first field
            check(f"variable ${name} ({v['query']}) returns values as {role}: {opts}", bool(opts), "no rows")
        else:
            continue
        values[name] = opts if "$__all" in (v.get("current") or {}).get("value", []) else v["current"]["value"]

    for p in dash["panels"]:
        for t in p.get("targets", []):
            res = run(f"panel {p['title']!r} ({t['refId']})", t["rawSql"], values)
            if res is None:
                continue
            sql, header, data = res
            hint = SCHEDULED_HINT if "status = 'scheduled'" in sql else ""
            check(f"panel {p['title']!r} ({t['refId']}) returns {len(data)} row(s) as {role}", bool(data), f"no rows{hint}\n#   as run: {sql}")
            if p["type"] == "table":
                check_links(p["title"], header, data[0] if data else None, p["fieldConfig"]["overrides"], ctx, args)
            if p["title"] == "Jobs":  # the list, one status at a time: a job in every state, each filter works
                for s in values["status"]:
                    one = run(f"panel 'Jobs' with status={s}", t["rawSql"], dict(values, status=[s]))
                    hint = SCHEDULED_HINT if s == "scheduled" else ""
                    if one is not None:
                        check(f"panel 'Jobs' with status={s} returns {len(one[2])} row(s)", bool(one[2]), f"no job is {s}{hint}")

    # The role: attributes, then writes that must fail. Each write is tried twice, so both guards are
    # proven: the default read-only transaction (SQLSTATE 25006), then, in a READ WRITE transaction,
    # the privileges alone (42501). Both end in ROLLBACK (or the error), so a role granted too much
    # still changes nothing in a real database.
    r = psql("SELECT rolcanlogin, rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls, "
             "rolpassword IS NOT NULL, coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting "
             f"WHERE setrole = a.oid AND setdatabase = 0), '') FROM pg_authid a WHERE rolname = '{role}'", db, args=["-At", "-F", "|"])
    check(f"{role}: LOGIN with a password, no superuser/createdb/createrole/replication/bypassrls, read-only by default",
          r.stdout.strip() == "t|f|t|default_transaction_read_only=on", r.stdout.strip() or r.stderr.strip())
    writes = {"INSERT": "INSERT INTO jobs (id, kind, payload, trace_id) VALUES (gen_random_uuid(), 'x', '{}', 'x')",
              "UPDATE": "UPDATE jobs SET error = 'x'", "DELETE": "DELETE FROM jobs", "TRUNCATE": "TRUNCATE jobs",
              "CREATE TABLE": "CREATE TABLE public.explorer_check (x int)"}
    for verb, sql in writes.items():
        got = []
        for begin, want in (("BEGIN", "25006"), ("BEGIN READ WRITE", "42501")):
            r = psql(None, db, role, password, ["-v", "VERBOSITY=verbose", "-c", begin, "-c", "SET LOCAL lock_timeout = '2s'",
                                                 "-c", sql, "-c", "ROLLBACK"])
            code = re.search(r"ERROR:\s+([0-9A-Z]{5}):", r.stderr)
            got.append((want, r.returncode, code.group(1) if code else r.stderr.strip()[:120]))
        check(f"{role} cannot {verb} (read-only transaction: 25006; in a READ WRITE one: permission denied, 42501)",
              all(rc != 0 and c == w for w, rc, c in got), str(got))


# ------------------------------------------------------------------ --seed: a scratch database
SEED = """
INSERT INTO jobs (id, kind, payload, status, progress, attempts, result, error, created_at, started_at, finished_at, run_at, trace_id)
SELECT gen_random_uuid(), kind, payload::jsonb, status::job_status, progress, attempts, result::jsonb, error,
       now() - created * interval '1 s', now() - started::int * interval '1 s', now() - finished::int * interval '1 s',
       now() + coalesce(run_in::int, -created) * interval '1 s', md5(random()::text)
FROM (VALUES
  ('sleep', '{"duration_ms":1000,"steps":2}', 'succeeded', 1.0, 1, '{"slept_ms":1000}', NULL, 1800, 1799, 1798, NULL),
  ('hash',  '{"rounds":5000000}',            'succeeded', 1.0, 1, '{"digest":"ab"}',   NULL, 1200, 1199, 1150, NULL),
  ('fail',  '{"transient":false}',           'failed',    0.0, 1, NULL, 'permanent failure (transient: false)', 900, 899, 899, NULL),
  ('fail',  '{"transient":true}',            'failed',    0.0, 3, NULL, 'transient failure; 3 attempts used', 600, 599, 590, NULL),
  ('sleep', '{"duration_ms":300000,"steps":100}', 'running', 0.4, 1, NULL, NULL, 130, 120, NULL, NULL),
  ('sleep', '{"duration_ms":50,"steps":1}',  'queued',    0.0, 0, NULL, NULL, 30, NULL, NULL, NULL),
  ('sleep', '{"duration_ms":300000,"steps":100}', 'cancelled', 0.1, 1, NULL, NULL, 500, 499, 470, NULL),
  ('sleep', '{"duration_ms":50,"steps":1}',  'scheduled', 0.0, 0, NULL, NULL, 10, NULL, NULL, 3600)
) AS v(kind, payload, status, progress, attempts, result, error, created, started, finished, run_in);
-- What the api keeps beside a job's row: a running job's entry in running, a scheduled one's
-- in the outbox.
INSERT INTO running (job_id) SELECT id FROM jobs WHERE status = 'running';
INSERT INTO outbox (job_id, run_at) SELECT id, run_at FROM jobs WHERE status = 'scheduled';
INSERT INTO workflows (id, name, trace_id) VALUES (gen_random_uuid(), 'seeded', md5('seeded'));
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--seed", action="store_true", help="scratch database with migrations and seeded jobs")
    mode.add_argument("--database", metavar="NAME", help="an existing database the api migrated")
    ap.add_argument("--role", help="use this existing read-only role (with --password) instead of making one")
    ap.add_argument("--password", help="the --role's password")
    ap.add_argument("--api", help="base URL of the api that wrote the database: its JSON link is fetched")
    ap.add_argument("--log", action="append", help="a service's log file: the Loki link's filter must match a line")
    ap.add_argument("--host", default=PG["host"])
    ap.add_argument("--port", default=PG["port"])
    args = ap.parse_args()
    if bool(args.role) != bool(args.password):
        ap.error("--role and --password go together")
    PG.update(host=args.host, port=args.port)
    suffix = secrets.token_hex(4)
    db = args.database or f"explorer_{suffix}"
    role, password = args.role or f"grafana_reader_{suffix}", args.password or secrets.token_hex(12)
    made = {"db": None, "role": None}

    def cleanup():
        """Once, on every exit: a scratch database (its grants go with it), then the role; in a
        database that stays, DROP OWNED first revokes what the init file granted there."""
        results = []
        if made["db"]:
            results.append(psql(f'DROP DATABASE IF EXISTS "{made["db"]}" WITH (FORCE)', "postgres"))
        if made["role"]:
            results += drop_reader(made["role"], None if made["db"] else db)
        bad = [r.stderr.strip() for r in results if r.returncode]
        gone = [f"{k} {v}" for k, v in (("database", made["db"]), ("role", made["role"])) if v]
        if bad or gone:
            print(f"not ok - explorer: cleanup: {'; '.join(bad)}" if bad else f"# removed {', '.join(gone)}", flush=True)
        made.update(db=None, role=None)
        return not bad
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *a: sys.exit(130))

    if args.seed:
        r = psql(f'CREATE DATABASE "{db}"', "postgres")
        check(f"scratch database {db} created", r.returncode == 0, r.stderr.strip())
        if r.returncode:
            return 1
        made["db"] = db
    if not args.role:
        made["role"] = role
        r = install_reader(db, role, password)
        check(f"role {role} made by {os.path.relpath(INIT_SQL, ROOT)} in {db}" + (" before the migrations" if args.seed else ""),
              r.returncode == 0, r.stderr.strip())
        if r.returncode:
            return 1
    if args.seed:  # as the api would: the migrations in order, as postgres, after the role exists
        for f in sorted(os.listdir(MIGRATIONS)):
            if f.endswith(".sql"):
                r = psql(None, db, args=["-q", "-1", "-f", os.path.join(MIGRATIONS, f)])
                check(f"migration {f} applied", r.returncode == 0, r.stderr.strip())
        r = psql(SEED, db)
        check("jobs seeded in every state", r.returncode == 0, r.stderr.strip())
        if failed:
            return 1
    try:
        run_checks(db, role, password, args)
    except Exception as e:  # noqa: BLE001 - report, don't crash without a result line
        check("run completed", False, f"{type(e).__name__}: {e}")
    ok = cleanup()
    return 1 if failed or not ok else 0


if __name__ == "__main__":
    sys.exit(main())

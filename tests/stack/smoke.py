#!/usr/bin/env python3
"""`make smoke`: the demo's promises, checked against a running `docker compose up` stack.

  compose              each service of `docker compose config` (active profiles) is running, and
                       `healthy` where it has a health check; a one-shot service that exited 0 is fine
  prometheus           every active target is up; every scrape job of prometheus.yml has a target
  grafana-datasources  every uid of datasources.yaml is in Grafana and its health check says OK
  job                  POST /jobs -> 202 + Location + traceparent; the job succeeds; its trace_id
  jaeger-trace         Jaeger's /api/traces/{trace_id} holds spans of both `api` and `worker`
  loki-logs            Loki, through Grafana's datasource proxy, has that trace's api and worker lines
  dashboards           each dashboard's first Prometheus query (logs dashboard: first Loki query;
                       Jobs explorer: first SQL query, its variables' SQL run first), run through
                       Grafana's /api/ds/query, returns data

Prints `ok - NAME`, `not ok - NAME: why` or `skip - NAME: why` per check, with `#` lines for what
was asked and what came back, then `N passed, N failed`. Standard library only; talks only to the
loopback URLs given (defaults: the host ports in .env) and runs `docker compose` ($COMPOSE_BIN if
set; honours COMPOSE_FILE / COMPOSE_PROFILES) in the repo root.

Run for real so far: `job` and `prometheus` against the locally built api and worker and a real
Prometheus. `compose`, `grafana-datasources`, `jaeger-trace`, `loki-logs` and `dashboards` follow
the HTTP API docs of Compose, Grafana 13, Jaeger v2 and Loki 3 and have met only stand-in servers
here: they run for real only where Docker is.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

from stacklib import read_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OBS = os.path.join(ROOT, "observability")
CHECKS = ["compose", "prometheus", "grafana-datasources", "job", "jaeger-trace", "loki-logs", "dashboards"]
NEEDS = {"jaeger-trace": "job", "loki-logs": "job"}
# Grafana's built-in interval variables; the others come from each dashboard's templating.
BUILTIN_VARS = {"__rate_interval": "1m", "__interval": "1m", "__auto": "1m", "__interval_ms": "60000",
                "__range": "15m", "__range_s": "900", "__range_ms": "900000"}
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never a proxy


class Failed(Exception):
    pass


def note(msg):
    print(f"#   {msg}", flush=True)


def short(x, n=240):
    s = " ".join((x if isinstance(x, str) else json.dumps(x)).split())
    return s if len(s) <= n else s[:n] + "…"


# The demo's admin key from .env (the api's API_DEMO_KEY); set in main().
API_KEY = ""


def http(method, url, body=None, timeout=10.0):
    """One request: (status, headers, JSON or text); status 0 when nothing came back."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"accept": "application/json"} | ({"content-type": "application/json"} if data else {})
    if API_KEY:
        headers["authorization"] = f"Bearer {API_KEY}"
    try:
        with OPENER.open(urllib.request.Request(url, data, headers, method=method), timeout=timeout) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    except (urllib.error.URLError, OSError, HTTPException) as e:
        return 0, {}, f"no answer from {url}: {getattr(e, 'reason', e)}"
    text = raw.decode("utf-8", "replace")
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def poll(step, wait, fail_prefix="", every=2.0):
    """Call step() -> (done, detail) until done or `wait` s are up; the detail, or Failed."""
    deadline = time.monotonic() + wait
    while True:
        done, detail = step()
        if done:
            return detail
        if time.monotonic() + every > deadline:
            raise Failed(fail_prefix + detail)
        time.sleep(every)


def compose(*argv):
    cmd = (os.environ.get("COMPOSE_BIN") or "docker compose").split() + list(argv)
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Failed(f"`{' '.join(cmd)}`: {e}")
    if r.returncode:
        raise Failed(f"`{' '.join(cmd)}` exited {r.returncode}: {short(r.stderr)}")
    return r.stdout.strip()


def check_compose(args, ctx):
    services = json.loads(compose("config", "--format", "json"))["services"]
    note(f"docker compose config: {len(services)} services: {' '.join(sorted(services))}")

    def step():
        out = compose("ps", "--all", "--format", "json")  # a JSON array (older Compose) or JSON lines
        containers = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines() if x.strip()]
        problems, seen = [], []
        for name, svc in sorted(services.items()):
            mine = [c for c in containers if c.get("Service") == name]
            has_hc = bool(svc.get("healthcheck")) and not svc["healthcheck"].get("disable")
            one_shot = str(svc.get("restart", "no")).split(":")[0] in ("no", "on-failure")
            problems += [] if mine else [f"{name}: no container"]
            for c in mine:
                cname, state, health, code = c.get("Name", name), c.get("State"), c.get("Health") or "", c.get("ExitCode")
                seen.append(f"{cname}={health or state}")
                if state == "exited" and code == 0 and one_shot:
                    continue
                if state != "running":
                    problems.append(f"{cname}: {state} (exit code {code})")
                elif has_hc and health != "healthy":
                    problems.append(f"{cname}: running, health {health or 'not reported'}")
        return not problems, "; ".join(problems) or " ".join(seen)

    note(f"docker compose ps --all: {poll(step, args.wait, every=3)}")


def check_prometheus(args, ctx):
    text = open(args.prometheus_config).read()
    jobs = re.findall(r"^\s*-\s*job_name:\s*['\"]?([^'\"\s#]+)", text, re.M)
    url = f"{args.prometheus}/api/v1/targets?state=active"
    note(f"scrape jobs of prometheus.yml: {' '.join(jobs)}; GET {url}")

    def step():
        st, _, body = http("GET", url, timeout=args.timeout)
        if st != 200 or not isinstance(body, dict):
            return False, f"HTTP {st}: {short(body)}"
        per_job = {}
        for t in body.get("data", {}).get("activeTargets", []):
            per_job.setdefault(t.get("scrapePool") or t.get("labels", {}).get("job"), []).append(t)
        problems = [f"{t.get('scrapePool')} {t.get('scrapeUrl')} is {t.get('health')} ({short(t.get('lastError'), 100)})"
                    for ts in per_job.values() for t in ts if t.get("health") != "up"]
        problems += [f"job {j}: no active target" for j in jobs if j not in per_job]
        ups = " ".join(f"{j}={sum(t.get('health') == 'up' for t in ts)}/{len(ts)}" for j, ts in sorted(per_job.items()))
        return not problems, "; ".join(problems + [f"up per job: {ups}"])

    note(poll(step, args.wait))


def check_grafana_datasources(args, ctx):
    text = open(os.path.join(OBS, "grafana", "provisioning", "datasources", "datasources.yaml")).read()
    uids = re.findall(r"^\s*(?:-\s+)?uid:\s*['\"]?([\w.-]+)", text, re.M)
    note(f"provisioned uids: {' '.join(uids)}; GET {args.grafana}/api/datasources")
    st, _, body = http("GET", f"{args.grafana}/api/datasources", timeout=args.timeout)
    if st != 200 or not isinstance(body, list):
        raise Failed(f"GET /api/datasources: HTTP {st}: {short(body)}")
    have = {d.get("uid"): d.get("type") for d in body}
    if missing := [u for u in uids if u not in have]:
        raise Failed(f"not in Grafana: {missing} (it has {sorted(have)})")
    urls = {uid: f"{args.grafana}/api/datasources/uid/{urllib.parse.quote(uid)}/health" for uid in uids}

    def step():  # {"status": "OK" | "ERROR", "message": ...}; HTTP 400 with that body when not OK
        answers, ok = [], True
        for uid, url in urls.items():
            st, _, res = http("GET", url, timeout=args.timeout)
            res = res if isinstance(res, dict) else {"status": None, "message": short(res)}
            ok &= res.get("status") == "OK"
            answers.append(f"{uid} ({have[uid]}): HTTP {st} {res.get('status')}: {short(res.get('message'), 160)}")
        return ok, "; ".join(answers)

    note(f"GET /api/datasources/uid/<uid>/health -> {poll(step, args.wait, f'not all OK within {args.wait:g} s: ')}")


def check_job(args, ctx):
    url, body = f"{args.api}/jobs", {"kind": "sleep", "payload": {"duration_ms": 200, "steps": 2}}
    ctx["t0"] = time.time()
    note(f"POST {url} {json.dumps(body)}")
    st, hdrs, res = http("POST", url, body, timeout=args.timeout)
    loc, tp = hdrs.get("location"), hdrs.get("traceparent")
    note(f"-> HTTP {st}, location: {loc}, traceparent: {tp}")
    if st != 202 or not loc:
        raise Failed(f"expected 202 with a Location, got HTTP {st} location={loc}: {short(res)}")
    if not (m := re.fullmatch(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}", tp or "")):
        raise Failed(f"no valid W3C traceparent header on the 202 (got {tp!r})")
    job_url, seen, last = urllib.parse.urljoin(args.api + "/", loc), [], {}

    def step():
        st, _, job = http("GET", job_url, timeout=args.timeout)
        last["job"] = job if isinstance(job, dict) else {"status": f"HTTP {st}: {short(job)}"}
        status = last["job"].get("status")
        if not seen or seen[-1] != status:
            seen.append(status)
        return status in ("succeeded", "failed", "cancelled"), short(last["job"])

    detail = poll(step, args.wait, f"not finished within {args.wait:g} s: ", every=0.5)
    job = last["job"]
    note(f"GET {job_url} until final: {' -> '.join(map(str, seen))}")
    if job.get("status") != "succeeded":
        raise Failed(f"job did not succeed: {detail}")
    trace_id = job.get("trace_id") or ""
    if not re.fullmatch(r"[0-9a-f]{32}", trace_id):
        raise Failed(f"job has no 32-hex trace_id: {trace_id!r}")
    note(f"job {job.get('id')} succeeded, progress {job.get('progress')}, trace_id {trace_id}")
    if trace_id != m.group(1):
        raise Failed(f"job trace_id {trace_id} is not the trace in the POST's traceparent ({m.group(1)})")
    ctx["trace_id"] = trace_id


def check_jaeger_trace(args, ctx):
    url = f"{args.jaeger}/api/traces/{ctx['trace_id']}"
    note(f"GET {url}")

    def step():  # {"data": [{"traceID", "spans": [...], "processes": {"p1": {"serviceName"}}}]}; 404 until exported
        st, _, res = http("GET", url, timeout=args.timeout)
        traces = (res.get("data") if isinstance(res, dict) else None) or []
        if st != 200 or not traces:
            return False, f"HTTP {st}: {short(res.get('errors') if isinstance(res, dict) else res)}"
        spans = [s for t in traces for s in t.get("spans") or []]
        services = sorted({p.get("serviceName") for t in traces for p in (t.get("processes") or {}).values()})
        ops = ", ".join(sorted({s.get("operationName") for s in spans}))
        return {"api", "worker"} <= set(services), f"{len(spans)} spans, services {services}, operations {short(ops, 200)}"

    note(poll(step, args.wait, f"no trace with api and worker spans within {args.wait:g} s; last: "))


def check_loki_logs(args, ctx):
    query = f'{{service=~".+"}} |= "{ctx["trace_id"]}"'
    base = f"{args.grafana}/api/datasources/proxy/uid/loki/loki/api/v1/query_range"
    note(f"GET {base}?query={query}&limit=1000, from 5 min before the job to now")

    def step():
        params = {"query": query, "start": int((ctx["t0"] - 300) * 1e9), "end": time.time_ns(), "limit": 1000}
        st, _, res = http("GET", f"{base}?{urllib.parse.urlencode(params)}", timeout=args.timeout)
        if st != 200 or not isinstance(res, dict):
            return False, f"HTTP {st}: {short(res)}"
        lines = {}
        for stream in res.get("data", {}).get("result", []):  # [{"stream": {labels}, "values": [[ns, line]]}]
            svc = stream.get("stream", {}).get("service", "?")
            lines[svc] = lines.get(svc, 0) + len(stream.get("values") or [])
        return bool(lines.get("api") and lines.get("worker")), \
            ", ".join(f"service={s}: {n} line(s)" for s, n in sorted(lines.items())) or "no lines"

    note(poll(step, args.wait, "want lines of this trace from service=api and service=worker; got "))


def dashboard_query(dash):
    """(panel title, datasource uid, query) of the first Prometheus target, else the first Loki one."""
    variables = dict(BUILTIN_VARS)
    for v in dash.get("templating", {}).get("list", []):
        cur = (v.get("current") or {}).get("value")
        if isinstance(cur, list):
            cur = None if "$__all" in cur or not cur else "|".join(cur)
        if cur is None or cur == "$__all":
            cur = v.get("allValue") or (".*" if v.get("includeAll") or v.get("type") != "textbox" else v.get("query", ""))
        variables[v["name"]] = cur
    found, stack = {}, list(reversed(dash.get("panels", [])))
    while stack:
        p = stack.pop()
        stack += reversed(p.get("panels") or [])  # panels of collapsed rows
        for t in p.get("targets") or []:
            ds = t.get("datasource") or p.get("datasource") or {}
            ds = ds if isinstance(ds, dict) else {"uid": ds}
            if ds.get("uid") in ("prometheus", "loki") and t.get("expr") and ds["uid"] not in found:
                expr = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]",
                              lambda m: variables.get(m.group(1) or m.group(2) or m.group(3), m.group(0)), t["expr"])
                q = {k: v for k, v in t.items() if k not in ("datasource", "expr")}
                q.update(refId=t.get("refId", "A"), datasource={"uid": ds["uid"], "type": ds.get("type") or ds["uid"]},
                         expr=expr, intervalMs=15000, maxDataPoints=500)
                found[ds["uid"]] = (p.get("title"), ds["uid"], q)
    return found.get("prometheus") or found.get("loki")


def ds_query(args, query):
    """One query through Grafana's /api/ds/query, last 15 min: (each frame's columns, error or "")."""
    body = {"from": "now-15m", "to": "now", "queries": [query]}
    # {"results": {refId: {"frames": [{"schema", "data": {"values": [[...], ...]}}], "error"?}}}
    st, _, res = http("POST", f"{args.grafana}/api/ds/query", body, timeout=args.timeout)
    r = (res.get("results") or {}).get(query["refId"], {}) if isinstance(res, dict) else {}
    if st != 200 or r.get("error"):
        return [], f"HTTP {st}: {short(r.get('error') or res)}"
    return [(fr.get("data") or {}).get("values") or [] for fr in r.get("frames") or []], ""


def sql_dashboard_query(args, dash):
    """(panel title, datasource uid, query) of the first SQL target, its variables expanded as
    Grafana's frontend does (grafana_expand.frontend, sources cited there) with the values of the
    dashboard's own variable queries, run through Grafana first; Grafana expands the macros."""
    from grafana_expand import Unsupported, custom_options, frontend
    values = {}
    for v in dash.get("templating", {}).get("list", []):
        if v["type"] == "custom":
            values[v["name"]] = custom_options(v["query"])
        elif v["type"] == "query" and (v.get("datasource") or {}).get("type") == "grafana-postgresql-datasource":
            frames, err = ds_query(args, {"refId": v["name"], "datasource": v["datasource"], "rawSql": v["query"], "format": "table"})
            values[v["name"]] = list(dict.fromkeys(frames[0][0])) if frames and frames[0] else []  # the first field
            note(f"variable ${v['name']}: {values[v['name']] or err}")
    for p in dash.get("panels", []):
        for t in p.get("targets") or []:
            if t.get("rawSql"):
                try:
                    sql = frontend(t["rawSql"], values)
                except Unsupported as e:
                    raise Failed(f"{p.get('title')!r}: {e}")
                return p.get("title"), t["datasource"]["uid"], {"refId": t.get("refId", "A"), "datasource": t["datasource"],
                                                                "rawSql": sql, "format": t.get("format", "table")}
    return None


def check_dashboards(args, ctx):
    files = sorted(glob.glob(os.path.join(OBS, "grafana", "dashboards", "*.json")))
    bad = [] if files else ["no dashboard JSON in observability/grafana/dashboards/"]
    for f in files:
        dash = json.load(open(f))
        name, picked = os.path.basename(f), dashboard_query(dash) or sql_dashboard_query(args, dash)
        if not picked:
            bad.append(f"{name}: no Prometheus, Loki or SQL target")
            continue
        title, uid, query = picked

        def step():
            frames, err = ds_query(args, query)
            n = max((len(col) for cols in frames for col in cols), default=0)
            return n > 0 and not err, err or f"{len(frames)} frame(s), longest column {n} values"
        try:
            detail = poll(step, args.wait)
        except Failed as e:
            detail = str(e)
            bad.append(f"{name} / {title!r}: {detail}")
        note(f"{name} / {title!r} ({uid}): {short(query.get('expr') or query['rawSql'], 120)} -> {detail}")
    if bad:
        raise Failed("; ".join(bad))


def loopback_url(value):
    if urllib.parse.urlsplit(value).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise argparse.ArgumentTypeError(f"{value}: only loopback URLs (127.0.0.1) are allowed")
    return value.rstrip("/")


def check_list(value):
    names = [n.strip() for n in value.split(",") if n.strip()]
    if unknown := [n for n in names if n not in CHECKS]:
        raise argparse.ArgumentTypeError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    return names


def main():
    env = read_env()
    global API_KEY
    # $API_KEY (another api's key), else the demo's from .env.
    API_KEY = os.environ.get("API_KEY") or env.get("API_DEMO_KEY", "")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"checks: {', '.join(CHECKS)}. "
                                 "jaeger-trace and loki-logs follow the job check's trace: --only adds job "
                                 "for them, --skip job skips them.")
    for opt, key, port in (("api", "API_PORT", 8080), ("prometheus", "PROMETHEUS_PORT", 9090),
                           ("grafana", "GRAFANA_PORT", 3000), ("jaeger", "JAEGER_UI_PORT", 16686)):
        ap.add_argument(f"--{opt}", type=loopback_url, help=f"base URL (default: 127.0.0.1, {key} of .env)",
                        default=f"http://127.0.0.1:{os.environ.get(key) or env.get(key) or port}")
    ap.add_argument("--only", type=check_list, metavar="CHECK[,CHECK]", help="run only these checks")
    ap.add_argument("--skip", type=check_list, metavar="CHECK[,CHECK]", default=[], help="skip these checks")
    ap.add_argument("--prometheus-config", default=os.path.join(OBS, "prometheus", "prometheus.yml"),
                    help="the config whose scrape jobs must all have a target (default: the compose one)")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds for eventually consistent answers (60)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (10)")
    args = ap.parse_args()

    only = set(args.only or CHECKS)
    only |= {NEEDS[c] for c in only if c in NEEDS}
    passed = failed = 0
    ctx = {}
    for name in CHECKS:
        dep = NEEDS.get(name)
        if name in args.skip or name not in only:
            print(f"skip - {name}: {'--skip' if name in args.skip else 'not in --only'}", flush=True)
        elif dep in args.skip:
            print(f"skip - {name}: needs the {dep} check, which is skipped", flush=True)
        elif dep and "trace_id" not in ctx:
            print(f"skip - {name}: needs a trace_id from the {dep} check, which failed", flush=True)
        else:
            print(f"# {name}", flush=True)
            try:
                globals()["check_" + name.replace("-", "_")](args, ctx)
                passed += 1
                print(f"ok - {name}", flush=True)
            except Failed as e:
                failed += 1
                print(f"not ok - {name}: {short(str(e), 2000)}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

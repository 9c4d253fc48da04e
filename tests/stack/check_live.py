#!/usr/bin/env python3
"""Live stack checks (c, d): the locally built api and worker against the local RabbitMQ and
PostgreSQL, scraped by a real Prometheus whose config is derived from the compose one; every
dashboard PromQL query and every alert expression evaluated; the Grafana log<->trace links
checked against the services' real log lines; then jobs left in every state and the Jobs explorer's
SQL run on them by check_explorer.py, as the read-only role made (as compose makes it) before the
api migrated the database.

Needs: target/debug/{api,worker} (run.sh builds them), `prometheus` on PATH, local RabbitMQ
(127.0.0.1:5672, plugins enabled here) and PostgreSQL (127.0.0.1:5432, trust auth).
Prints one `ok - …` / `not ok - …` line per check. Every process it starts and the temporary
database, vhost objects and files are removed on exit (run.sh's trap is the second line of defence).
"""
import atexit
import glob
import http.server
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import yaml

from check_explorer import install_reader
from prom_local import config_for_local
from stacklib import delete_broker_objects, free_port, read_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OBS = os.path.join(ROOT, "observability")
OWN_STATE = not os.environ.get("STACK_STATE")
STATE = os.environ.get("STACK_STATE") or tempfile.mkdtemp(prefix="jobstack-stack.")
SUFFIX = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
DB = f"stackcheck_{SUFFIX}"
PREFIX = f"stackcheck_{SUFFIX}"
# The Jobs explorer's read-only role: cluster-wide, so one per run (parallel runs never share it),
# dropped after the database (which takes its grants with it).
READER, READER_PASSWORD = f"grafana_reader_{SUFFIX}", "".join(random.choices(string.ascii_letters, k=20))
RATE_INTERVAL = "2m"   # stands for $__rate_interval: wide enough to cover the whole run
SUBST = {"__rate_interval": RATE_INTERVAL, "__interval": "15s", "__range": "10m", "__range_s": "600", "__auto": "15s"}
WORKER_CONCURRENCY = 4
failed = 0
procs = []
STARTED = time.time()
FAULTS_TOKEN = read_env().get("FAULTS_TOKEN", "")


def check(name, ok, detail=""):
    global failed
    if ok:
        print(f"ok - {name}", flush=True)
    else:
        failed += 1
        print(f"not ok - {name}: {detail}", flush=True)


def relay(line):
    """A line of a check run as a subprocess: printed as is; its `not ok` counts as this run's."""
    global failed
    failed += line.startswith("not ok - ")
    print(line, flush=True)


def note(msg):
    print(f"# {msg}", flush=True)


# The demo's own admin key from .env (API_DEMO_KEY): the api is started with it, so a key .env
# could not register stops this check, and every request of the checks sends it.
API_KEY = read_env().get("API_DEMO_KEY", "")


def curl(method, url, body=None, timeout=10):
    """One HTTP request with curl: (status, body text, headers text)."""
    cmd = ["curl", "-sS", "-m", str(timeout), "-X", method, "-D", "-", "-o", os.path.join(STATE, "curl.body"), url,
           "-H", f"authorization: Bearer {API_KEY}"]
    if body is not None:
        cmd += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return 0, r.stderr, ""
    heads = r.stdout
    statuses = re.findall(r"^HTTP/\S+ (\d{3})", heads, re.M)
    text = open(os.path.join(STATE, "curl.body"), errors="replace").read()
    return int(statuses[-1]) if statuses else 0, text, heads


def get_json(url, params=None, timeout=10):
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not after {timeout}s (last: {last})")


def start(name, cmd, env):
    log = open(os.path.join(STATE, f"{name}.log"), "w")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    with open(os.path.join(STATE, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    return p


def psql(sql):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                          capture_output=True, text=True, timeout=30)


def cleanup():
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    psql(f'drop database if exists "{DB}" with (force)')
    psql(f'drop role if exists "{READER}"')
    # The broker is shared: remove this run's queues and exchanges (management API).
    delete_broker_objects(PREFIX)
    if OWN_STATE:
        shutil.rmtree(STATE, ignore_errors=True)


class GrafanaAnnotations(http.server.BaseHTTPRequestHandler):
    """Stands in for Grafana's annotation API (Grafana does not run here): keeps each POST body."""
    posted = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        GrafanaAnnotations.posted.append((self.path, self.headers.get("content-type"), body.decode()))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class OtlpSink(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: accepts trace exports so the services run with tracing on."""
    exports = {"count": 0}

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        OtlpSink.exports["count"] += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------- Prometheus config from compose
LOCAL_JOBS = {"api", "worker", "rabbitmq", "rabbitmq-queues", "prometheus"}
# Stack components that do not run on this machine (no Docker): their jobs are dropped here.
NOT_HERE = {"loki", "jaeger", "jaeger-spanmetrics", "grafana", "log-shipper"}


def compose_prometheus_features():
    """The `--enable-feature=` flags compose starts Prometheus with (exemplar storage among them)."""
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    return [a for a in compose["services"]["prometheus"]["command"] if a.startswith("--enable-feature=")]


def local_prometheus_config(ports):
    cfg, dropped = config_for_local()
    if dropped:
        note(f"prometheus.yml keys the local Prometheus does not read, dropped here: {dropped}")
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {"api": f"127.0.0.1:{ports['api']}", "worker": f"127.0.0.1:{ports['worker']}",
               "rabbitmq": "127.0.0.1:15692", "rabbitmq-queues": "127.0.0.1:15692", "prometheus": f"127.0.0.1:{ports['prom']}"}
    jobs, unknown, kept = [], [], []
    for sc in cfg["scrape_configs"]:
        job = sc["job_name"]
        if job in NOT_HERE:
            continue
        if job not in LOCAL_JOBS:
            unknown.append(job)
            continue
        sc = {k: v for k, v in sc.items() if not k.endswith("_sd_configs") and k != "static_configs"}
        sc["static_configs"] = [{"targets": [targets[job]]}]
        sc.pop("scrape_interval", None)
        jobs.append(sc)
        kept.append(job)
    cfg["scrape_configs"] = jobs
    return cfg, kept, unknown


# ---------------------------------------------------------------- PromQL helpers
def substitute(expr, variables):
    def var(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in SUBST:
            return SUBST[name]
        if name in variables:
            return variables[name]
        return m.group(0)
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", var, expr)


def prom_query(base, expr):
    try:
        r = get_json(f"{base}/api/v1/query", {"query": expr, "time": f"{time.time():.3f}"})
    except urllib.error.HTTPError as e:
        return "error", json.load(e).get("error", str(e))
    except Exception as e:  # noqa: BLE001
        return "error", str(e)
    if r.get("status") != "success":
        return "error", r.get("error")
    return "success", r["data"]["result"]


def split_top(expr, ops=("or", "and", "unless")):
    """Split a PromQL expression on top-level (depth 0, outside strings) set operators."""
    parts, depth, cur, i, quote = [], 0, "", 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            cur += c
            if c == "\\":
                cur += expr[i + 1]
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
            cur += c
        elif c in "([{":
            depth += 1
            cur += c
        elif c in ")]}":
            depth -= 1
            cur += c
        else:
            m = re.match(r"\s(%s)\s" % "|".join(ops), expr[i:]) if depth == 0 else None
            if m:
                parts.append(cur)
                cur = ""
                i += m.end() - 1
            else:
                cur += c
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+]?[0-9.]+(e[-+]?\d+)?\s*$")


def underlying(expr):
    """The series behind an alert: each top-level operand, without its final threshold comparison.
    absent(...) operands are dropped (they are empty exactly when the series exists)."""
    out = []
    for part in split_top(expr):
        if part.startswith("absent("):
            continue
        out.append(THRESHOLD.sub("", part))
    return out


# Alerts that must stay silent while the run is healthy (for queue alerts: on this run's queues;
# the broker is shared with other test runs whose leftover queues have no consumers).
SILENT_WHEN_HEALTHY = {"JobstackApiDown", "JobstackNoWorkers", "JobstackWorkerDown", "JobstackBrokerDown",
                       "JobstackAmqpDisconnected", "JobstackBrokerResourceAlarm", "JobstackApiHighErrorRatio",
                       "JobstackOutboxBacklog", "JobstackJobQueueNoConsumers"}
# Queries that may legitimately return no data in a healthy run (none today; say why beside each).
ALLOW_EMPTY = {
}


def main():
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *a: sys.exit(130))
    with open(os.path.join(STATE, "db"), "w") as f:
        f.write(DB)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    api_bin, worker_bin = os.path.join(target, "debug", "api"), os.path.join(target, "debug", "worker")
    check("live: target/debug/api and target/debug/worker are built", os.access(api_bin, os.X_OK) and os.access(worker_bin, os.X_OK))
    if failed:
        return 1

    # RabbitMQ's prometheus plugin on the local broker.
    r = subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management", "rabbitmq_prometheus"], capture_output=True, text=True, timeout=120)
    try:
        wait_for("rabbitmq prometheus plugin on :15692", lambda: urllib.request.urlopen("http://127.0.0.1:15692/metrics", timeout=5).status == 200, 60)
        check("live: RabbitMQ prometheus plugin serves :15692/metrics", True)
    except TimeoutError as e:
        check("live: RabbitMQ prometheus plugin serves :15692/metrics", False, f"{e}; rabbitmq-plugins: {r.stderr[-300:]}")
        return 1

    r = psql(f'create database "{DB}"')
    check(f"live: database {DB} created", r.returncode == 0, r.stderr.strip())
    if r.returncode:
        return 1
    # As at the postgres image's first start: the init file on the empty database, so the api's
    # tables become readable through its default privileges (the grant on existing tables is a no-op).
    with open(os.path.join(STATE, "role"), "w") as f:
        f.write(READER)
    r = install_reader(DB, READER, READER_PASSWORD)
    check(f"live: role {READER} made by observability/postgres/initdb/10-grafana-reader.sql before the api migrates",
          r.returncode == 0, r.stderr.strip())

    otlp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    threading.Thread(target=otlp.serve_forever, daemon=True).start()
    ports = {"api": free_port(), "worker": free_port(), "prom": free_port()}
    # The services read .env.example as a user running them outside compose would (so every value
    # in it is loaded by the real programs), with this run's names, ports and a fast retry.
    example = {k: v for k, v in read_env(os.path.join(ROOT, ".env.example")).items() if v}
    check("live: .env.example sets AMQP_URL and DATABASE_URL", {"AMQP_URL", "DATABASE_URL"} <= set(example), str(sorted(example)))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RUST_LOG", "LOG_FORMAT", "AMQP_", "DATABASE_URL"))}
    base_env.update(example)
    base_env.update(AMQP_PREFIX=PREFIX, RUST_BACKTRACE="0", MAX_ATTEMPTS="3", RETRY_BASE_MS="200", FAULTS_TOKEN=FAULTS_TOKEN,
                    OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.server_address[1]}", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    database_url = urllib.parse.urlsplit(example.get("DATABASE_URL", ""))._replace(path=f"/{DB}").geturl()
    api = start("api", [api_bin], dict(base_env, OTEL_SERVICE_NAME="api", API_LISTEN=f"127.0.0.1:{ports['api']}",
                                        DATABASE_URL=database_url, API_DEMO_KEY=API_KEY))
    worker = start("worker", [worker_bin], dict(base_env, OTEL_SERVICE_NAME="worker", WORKER_LISTEN=f"127.0.0.1:{ports['worker']}",
                                                 WORKER_CONCURRENCY=str(WORKER_CONCURRENCY)))
    API = f"http://127.0.0.1:{ports['api']}"
    for name, url, p in (("api", f"{API}/readyz", api), ("worker", f"http://127.0.0.1:{ports['worker']}/readyz", worker)):
        try:
            wait_for(f"{name} ready", lambda: p.poll() is None and curl("GET", url)[0] == 200, 60)
            check(f"live: {name} answers /readyz 200", True)
        except TimeoutError as e:
            tail = open(os.path.join(STATE, f"{name}.log"), errors="replace").read()[-800:]
            check(f"live: {name} answers /readyz 200", False, f"{e}; exit={p.poll()}; log tail: {tail}")
            return 1

    # The Kubernetes ConfigMap (deploy/k8s/base/config.env) loaded by the real programs: a second
    # api and worker start with its values, only this run's names, addresses and the URLs (which
    # the Deployments build from Secrets) replaced, and must become ready.
    k8s = {k: v for k, v in read_env(os.path.join(ROOT, "deploy", "k8s", "base", "config.env")).items()}
    k8s_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RUST_LOG", "LOG_FORMAT", "AMQP_", "DATABASE_URL"))}
    k8s_env.update(k8s)
    k8s_env.update(AMQP_PREFIX=PREFIX, AMQP_URL=example["AMQP_URL"], DATABASE_URL=database_url)
    k8s_ports = {"api": free_port(), "worker": free_port()}
    k8s_api = start("k8s-api", [api_bin], dict(k8s_env, API_LISTEN=f"127.0.0.1:{k8s_ports['api']}"))
    k8s_worker = start("k8s-worker", [worker_bin], dict(k8s_env, WORKER_LISTEN=f"127.0.0.1:{k8s_ports['worker']}"))
    for name, p in (("api", k8s_api), ("worker", k8s_worker)):
        url = f"http://127.0.0.1:{k8s_ports[name]}/readyz"
        try:
            wait_for(f"k8s {name} ready", lambda: p.poll() is None and curl("GET", url)[0] == 200, 60)
            check(f"live: {name} with deploy/k8s/base/config.env answers /readyz 200", True)
        except TimeoutError as e:
            tail = open(os.path.join(STATE, f"k8s-{name}.log"), errors="replace").read()[-800:]
            check(f"live: {name} with deploy/k8s/base/config.env answers /readyz 200", False, f"{e}; exit={p.poll()}; log tail: {tail}")
        p.terminate()
        p.wait(timeout=30)

    # Prometheus 3.x (compose) fails a scrape whose Content-Type is missing or unknown, where the
    # local 2.42 would guess: require the text format's media type explicitly.
    for name, url in (("api", f"{API}/metrics"), ("worker", f"http://127.0.0.1:{ports['worker']}/metrics")):
        st, _, heads = curl("GET", url)
        ctype = (re.findall(r"^content-type:\s*(.+?)\s*$", heads, re.I | re.M) or [""])[-1]
        check(f"live: {name} /metrics is served as text/plain (Prometheus 3 scrapes need a known Content-Type)",
              st == 200 and ctype.lower().startswith("text/plain"), f"status={st} content-type={ctype!r}")

    # A real Prometheus, config derived from the compose one.
    cfg, kept, unknown = local_prometheus_config(ports)
    check("live: every compose scrape job is mapped to a local target or listed as not running here", not unknown, f"unmapped: {unknown}")
    note(f"scrape jobs run here: {kept}; not here (no Docker): {sorted(NOT_HERE)}")
    cfg_path = os.path.join(STATE, "prometheus.yml")
    yaml.safe_dump(cfg, open(cfg_path, "w"), sort_keys=False)
    features = compose_prometheus_features()
    check("compose: Prometheus runs with exemplar storage", "--enable-feature=exemplar-storage" in features, str(features))
    prom = start("prometheus", ["prometheus", f"--config.file={cfg_path}", f"--storage.tsdb.path={os.path.join(STATE, 'tsdb')}",
                                f"--web.listen-address=127.0.0.1:{ports['prom']}", "--log.level=warn", *features], os.environ.copy())
    PROM = f"http://127.0.0.1:{ports['prom']}"
    try:
        wait_for("prometheus ready", lambda: prom.poll() is None and urllib.request.urlopen(f"{PROM}/-/ready", timeout=2).status == 200, 60)
    except TimeoutError as e:
        check("live: prometheus starts with the derived config", False, f"{e}: {open(os.path.join(STATE, 'prometheus.log')).read()[-800:]}")
        return 1
    check("live: prometheus starts with the derived config", True)

    def targets_up():
        act = get_json(f"{PROM}/api/v1/targets")["data"]["activeTargets"]
        return len(act) == len(kept) and all(t["health"] == "up" for t in act) and act
    try:
        wait_for("all targets up", targets_up, 30)
        check(f"live: all {len(kept)} scrape targets up", True)
    except TimeoutError:
        act = get_json(f"{PROM}/api/v1/targets")["data"]["activeTargets"]
        check(f"live: all {len(kept)} scrape targets up", False, str([(t["labels"]["job"], t["health"], t.get("lastError")) for t in act]))

    # ------------------------------------------------ drive jobs of every kind through the api
    jobs = []

    def post(kind, payload):
        st, body, heads = curl("POST", f"{API}/jobs", {"kind": kind, "payload": payload})
        ok = st == 202 and re.search(r"^location: /jobs/", heads, re.I | re.M)
        if ok:
            jobs.append(json.loads(body))
        return st
    final = {"succeeded", "failed", "cancelled"}

    def all_final():
        states = {}
        for j in jobs:
            st, body, _ = curl("GET", f"{API}/jobs/{j['id']}")
            states[j["id"]] = json.loads(body).get("status") if st == 200 else f"http {st}"
        return states if all(s in final for s in states.values()) else None

    # Warm-up: one job of each kind first, so that every kind/outcome series exists before the main
    # wave. A counter born at N after a burst between two scrapes shows no rate() at all (see the
    # report: the services could pre-register their label combinations at 0).
    statuses = [post("sleep", {"duration_ms": 50, "steps": 1}), post("hash", {"rounds": 1000}),
                post("fail", {"transient": True}), post("fail", {"transient": False})]
    # A schedule firing every second through the whole run: the Schedules row has data.
    sched_st, sched_body, _ = curl("POST", f"{API}/schedules", {
        "name": "live-every-second", "kind": "hash", "payload": {"rounds": 1}, "interval_secs": 1, "missed": "skip"})
    check("live: POST /schedules answers 201", sched_st == 201, f"{sched_st} {sched_body[:200]}")
    # A workflow: the explorer lists it, the dashboard counts it.
    wf_st, wf_body, _ = curl("POST", f"{API}/workflows", {"name": "live", "jobs": [
        {"key": "a", "kind": "hash", "payload": {"rounds": 1}},
        {"key": "b", "kind": "hash", "payload": {"rounds": 1}, "depends_on": ["a"]}]})
    check("live: POST /workflows answers 201", wf_st == 201, f"{wf_st} {wf_body[:200]}")
    try:
        wait_for("warm-up jobs final", all_final, 60)
    except TimeoutError as e:
        note(str(e)[:300])
    time.sleep(3)
    statuses += [post("sleep", {"duration_ms": 300, "steps": 3}) for _ in range(6)]
    statuses += [post("hash", {"rounds": 200000}) for _ in range(4)]
    statuses += [post("fail", {"transient": True}) for _ in range(3)]
    statuses += [post("fail", {"transient": False}) for _ in range(2)]
    check("live: POST /jobs answers 202 + Location for sleep, hash and fail jobs", statuses == [202] * len(statuses), str(statuses))
    long_st = post("sleep", {"duration_ms": 30000, "steps": 10})
    long_job = jobs[-1] if long_st == 202 else None
    bad_st = curl("POST", f"{API}/jobs", {"kind": "sleep", "payload": {"duration_ms": -1}})[0]
    unknown_st = curl("GET", f"{API}/jobs/00000000-0000-4000-8000-000000000000")[0]
    check("live: bad input is 4xx, an unknown job 404", 400 <= bad_st < 500 and unknown_st == 404, f"bad={bad_st} unknown={unknown_st}")
    for path in ("/jobs?limit=5", "/jobs?status=queued", "/healthz", "/openapi.json"):
        curl("GET", API + path)
    if long_job:
        time.sleep(1.5)
        st = curl("POST", f"{API}/jobs/{long_job['id']}/cancel")[0]
        check("live: cancelling a running job answers 202", st == 202, str(st))

    try:
        states = wait_for("every job in a final state", all_final, 120)
        outcome = {}
        for j in jobs:
            outcome.setdefault((j["kind"], j["payload"].get("transient")), set()).add(states[j["id"]])
        expect_ok = outcome.get(("sleep", None), set()) <= {"succeeded", "cancelled"} and outcome.get(("hash", None)) == {"succeeded"} \
            and outcome.get(("fail", True)) == {"failed"} and outcome.get(("fail", False)) == {"failed"}
        check("live: every job reached its expected final state (sleep/hash succeeded, fail failed, long sleep cancelled)",
              expect_ok and (not long_job or states[long_job["id"]] == "cancelled"), str({str(k): sorted(v) for k, v in outcome.items()}))
    except TimeoutError as e:
        check("live: every job reached a final state within 120 s", False, str(e)[:600])
    finished_id = jobs[0]["id"]
    st = curl("POST", f"{API}/jobs/{finished_id}/cancel")[0]
    check("live: cancelling a finished job answers 409", st == 409, str(st))
    for _ in range(3):
        curl("GET", f"{API}/jobs/{finished_id}")
    time.sleep(8)  # a few more scrapes and rule evaluations after the last change
    st, body, _ = curl("GET", f"{API}/jobs?schedule=live-every-second&limit=100")
    fired = json.loads(body).get("items", []) if st == 200 else []
    check("live: the schedule made jobs, each saying so, and they ran",
          len(fired) >= 5 and all(j["fired_by"]["schedule"] == "live-every-second" for j in fired)
          and any(j["status"] == "succeeded" for j in fired), f"{st} {len(fired)} jobs")
    st = curl("POST", f"{API}/schedules/live-every-second/pause")[0]
    check("live: pausing the schedule answers 200", st == 200, str(st))

    # ------------------------------------------------ the parts of `make smoke` that run here
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "stack", "smoke.py"), "--only", "prometheus,job",
                        "--api", API, "--prometheus", PROM, "--prometheus-config", cfg_path, "--wait", "30"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "API_KEY": API_KEY})
    for line in r.stdout.splitlines():
        if re.match(r"(not )?ok - ", line):
            ok = line.startswith("ok")
            check(f"make smoke (local part) {line.split(' - ', 1)[1]}", ok, "" if ok else r.stdout[-800:])
    check("make smoke (local part): exit 0", r.returncode == 0, (r.stdout + r.stderr)[-800:])

    # ------------------------------------------------ every dashboard query
    evaluated = with_data = 0
    empty, errors = [], []
    for f in sorted(glob.glob(os.path.join(OBS, "grafana", "dashboards", "*.json"))):
        d = json.load(open(f))
        name = os.path.basename(f)
        variables = {}
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") == "prometheus":
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"])
                vals = get_json(f"{PROM}/api/v1/label/{m.group(2)}/values", {"match[]": m.group(1)})["data"] if m else []
                if v.get("regex"):
                    rx = re.compile(v["regex"].strip("/"))
                    vals = [rx.match(x).group(1) for x in vals if rx.match(x)]
                evaluated += 1
                ok = (PREFIX in vals) if v["name"] == "prefix" else bool(vals)
                with_data += ok
                check(f"{name}: variable ${v['name']} ({v['query']}) finds values here", ok, f"values={vals[:10]}")
                variables[v["name"]] = PREFIX if v["name"] == "prefix" else (v.get("allValue") or ".*")
        for p in d.get("panels", []):
            for t in p.get("targets", []):
                ds = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if ds != "prometheus":
                    continue
                expr = substitute(t["expr"], variables)
                status, res = prom_query(PROM, expr)
                evaluated += 1
                label = f"{name} / {p['title']} / {t['refId']}"
                if status != "success":
                    errors.append(f"{label}: {res}")
                elif label in ALLOW_EMPTY:
                    with_data += bool(res)
                elif not res:
                    empty.append(f"{label}: {expr}")
                elif all(v[1] == "NaN" for s in res for v in [s.get("value", [0, "NaN"])]):
                    # Grafana draws an all-NaN answer (e.g. a quantile of zero rates) as "No data".
                    empty.append(f"{label} (only NaN): {expr}")
                else:
                    with_data += 1
    check("live: every dashboard PromQL query parses and runs", not errors, "; ".join(errors))
    check("live: every dashboard PromQL query returns data (not only NaN)", not empty, "\n#   ".join([""] + empty))
    note(f"dashboards: {evaluated} queries and variables evaluated, {with_data} returned data, {len(empty)} empty, {len(errors)} errors")

    # ------------------------------------------------ every alert rule
    rules = yaml.safe_load(open(os.path.join(OBS, "prometheus", "rules", "jobstack.yml")))
    loaded = get_json(f"{PROM}/api/v1/rules")["data"]["groups"]
    n_rules = sum(len(g["rules"]) for g in rules["groups"])
    check(f"live: prometheus loaded all {n_rules} rules from the same files", sum(len(g["rules"]) for g in loaded) == n_rules
          and all(r.get("health") == "ok" for g in loaded for r in g["rules"]),
          str([(r["name"], r.get("health"), r.get("lastError")) for g in loaded for r in g["rules"] if r.get("health") != "ok"]))
    a_eval = a_data = 0
    for g in rules["groups"]:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            status, res = prom_query(PROM, r["expr"])
            a_eval += 1
            check(f"alert {name}: expression parses and runs", status == "success", str(res))
            if name in SILENT_WHEN_HEALTHY and status == "success":
                own = [s["metric"] for s in res if "queue" not in s["metric"] or s["metric"]["queue"].startswith(PREFIX + ".")]
                check(f"alert {name}: silent while the run is healthy", not own, str(own))
            parts = underlying(r["expr"])
            results = []
            for part in parts:
                st2, res2 = prom_query(PROM, part)
                a_eval += 1
                real = st2 == "success" and any(s["value"][1] != "NaN" for s in res2)
                a_data += real
                results.append((part, st2, (len(res2) if real else 0) if st2 == "success" else res2))
            bad = [x for x in results if x[1] != "success" or not x[2]]
            check(f"alert {name}: underlying series have data ({len(parts)} expression(s))",
                  parts and (not bad or name in ALLOW_EMPTY), str(bad))
    note(f"alerts: {a_eval} expressions evaluated (full rules + underlying series), {a_data} underlying series with data")

    # ------------------------------------------------ (d) logs and the Grafana log <-> trace links
    lines = {}
    for svc in ("api", "worker"):
        raw = open(os.path.join(STATE, f"{svc}.log"), errors="replace").read().splitlines()
        parsed, bad = [], []
        for ln in raw:
            try:
                obj = json.loads(ln)
                assert isinstance(obj, dict)
                parsed.append((ln, obj))
            except (ValueError, AssertionError):
                bad.append(ln)
        lines[svc] = parsed
        check(f"logs {svc}: every stdout line is one JSON object ({len(raw)} lines)", raw and not bad, f"{len(bad)} not JSON, e.g. {bad[:2]}")
        missing = [o for _, o in parsed if not all(k in o for k in ("timestamp", "level", "target", "message", "service"))]
        check(f"logs {svc}: timestamp, level, target, message, service on every line", not missing, str(missing[:2]))
        lv = {o.get("level") for _, o in parsed}
        check(f"logs {svc}: level is lower case trace|debug|info|warn|error (promtail label)", lv <= {"trace", "debug", "info", "warn", "error"}, str(lv))
        ts_bad = [o.get("timestamp") for _, o in parsed
                  if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", str(o.get("timestamp")))]
        check(f"logs {svc}: timestamp is RFC3339 (promtail `timestamp` stage, RFC3339Nano)", not ts_bad, str(ts_bad[:3]))
        svc_bad = {o.get("service") for _, o in parsed} - {svc}
        check(f"logs {svc}: service field is `{svc}`", not svc_bad, str(svc_bad))

    ds = yaml.safe_load(open(os.path.join(OBS, "grafana", "provisioning", "datasources", "datasources.yaml")))
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    field = next(f for f in by_uid["loki"]["jsonData"]["derivedFields"] if f.get("datasourceUid") == "jaeger")
    rx = re.compile(field["matcherRegex"])
    for svc in ("api", "worker"):
        with_tid = [(ln, o) for ln, o in lines[svc] if o.get("trace_id")]
        wrong = [ln for ln, o in with_tid if not (m := rx.search(ln)) or m.group(1) != o["trace_id"]]
        check(f"loki derived field {field['matcherRegex']} extracts trace_id from real {svc} lines ({len(with_tid)} lines with trace_id)",
              with_tid and not wrong, f"{len(wrong)} lines not matched, e.g. {wrong[:2]}")

    # The trace -> logs query Grafana builds from tracesToLogsV2, for a real job's trace.
    q = by_uid["jaeger"]["jsonData"]["tracesToLogsV2"]["query"].replace("$$", "$")
    m = re.fullmatch(r'\{(\w+)=~"\.\+"\} \|= `([^`]*)`', q)
    check("jaeger tracesToLogsV2: LogQL is {service=~\".+\"} |= `<trace id>\"` (a line filter: trace_id is in the line, not a label)",
          bool(m) and m.group(1) == "service" and "${__trace.traceId}" in m.group(2), q)
    tids = [j.get("trace_id") for j in jobs if j.get("trace_id")]
    check("api: each 202 body carries the job's 32-hex trace_id", len(tids) == len(jobs) and all(re.fullmatch(r"[0-9a-f]{32}", t) for t in tids), str(tids[:3]))
    if m and tids:
        hits = {}
        for variant in {tids[0], tids[0].lstrip("0")}:   # Jaeger may show an id without leading zeros
            needle = m.group(2).replace("${__trace.traceId}", variant)
            hits[variant] = {svc for svc in ("api", "worker") for ln, _ in lines[svc] if needle in ln}
        check("trace -> logs: the query finds the job's lines in both api and worker logs",
              all(v == {"api", "worker"} for v in hits.values()), str(hits))
    check("traces: api and worker exported spans over OTLP", OtlpSink.exports["count"] > 0, f"{OtlpSink.exports['count']} exports")

    # Metric -> trace: the exemplars Prometheus stored from its own scrapes (OpenMetrics), each a
    # trace whose id is in the JSON log lines of the request or job it measured, under the label
    # the Grafana datasource turns into a Jaeger link.
    dest = (by_uid["prometheus"]["jsonData"].get("exemplarTraceIdDestinations") or [{}])[0]
    check("prometheus datasource: exemplars' trace_id links to the jaeger datasource",
          dest.get("name") == "trace_id" and dest.get("datasourceUid") == "jaeger" and by_uid["jaeger"]["type"] == "jaeger", str(dest))
    for svc, selector in (("api", 'http_server_request_duration_seconds_bucket{job="api",method="POST",route="/jobs",status="202"}'),
                          ("worker", 'jobstack_job_duration_seconds_bucket{job="worker"}')):
        logged = {o.get("trace_id") for _, o in lines[svc] if o.get("trace_id")}
        found = []
        def stored():
            r = get_json(f"{PROM}/api/v1/query_exemplars", {"query": selector, "start": f"{STARTED - 60:.3f}", "end": f"{time.time():.3f}"})
            found[:] = [e for series in r.get("data") or [] for e in series.get("exemplars", [])]
            return bool(found)
        try:
            wait_for(f"exemplars of {selector}", stored, 30)
        except TimeoutError:
            pass
        tids = {e["labels"].get(dest.get("name", "trace_id")) for e in found}
        check(f"metric -> trace: Prometheus stored {len(found)} exemplar(s) of {selector}, each trace_id in the {svc}'s JSON log lines",
              found and tids <= logged, f"exemplar traces not logged: {sorted(t for t in tids if t not in logged)[:3]}")

    demo_story(API, f"127.0.0.1:{ports['worker']}")

    # ------------------------------------------------ the Jobs explorer, on jobs in every state
    running = jobs_in_every_state(API)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "stack", "check_explorer.py"), "--database", DB,
                        "--role", READER, "--password", READER_PASSWORD, "--api", API,
                        "--log", os.path.join(STATE, "api.log"), "--log", os.path.join(STATE, "worker.log")],
                       capture_output=True, text=True, timeout=180, env={**os.environ, "API_KEY": API_KEY})
    for line in r.stdout.splitlines():
        relay(line)
    check("live: check_explorer.py on this run's database exits 0", r.returncode == 0, (r.stdout + r.stderr)[-600:])
    for job_id in running:  # frees the worker slots, so the worker stops within its grace period
        curl("POST", f"{API}/jobs/{job_id}/cancel")
    return 1 if failed else 0


def demo_story(api, worker):
    """tools/demo-story.sh, phases of 2 s, against the running api and worker: each phase's
    faults switched on both services in turn (seen by polling /admin/faults), one Grafana
    annotation per phase in order, the compose commands in order, and everything off at the end.
    The compose commands are recorded by tests/stack/compose_standin.sh, not run (no Docker; the
    local broker is shared), so the broker outage itself is not exercised here."""
    grafana = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GrafanaAnnotations)
    threading.Thread(target=grafana.serve_forever, daemon=True).start()
    standin_log = os.path.join(STATE, "compose-standin.log")
    seen, stop = {"api": [], "worker": []}, threading.Event()

    def poll():
        while not stop.is_set():
            for svc, base in (("api", api), ("worker", f"http://{worker}")):
                req = urllib.request.Request(f"{base}/admin/faults", headers={"Authorization": f"Bearer {FAULTS_TOKEN}"})
                try:
                    now = json.load(urllib.request.urlopen(req, timeout=2))
                except OSError:
                    continue
                if not seen[svc] or seen[svc][-1] != now:
                    seen[svc].append(now)
            time.sleep(0.1)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    env = dict(os.environ, STORY_PHASE_SECS="2", STORY_API=api, STORY_GRAFANA=f"http://127.0.0.1:{grafana.server_address[1]}",
               COMPOSE=os.path.join(ROOT, "tests", "stack", "compose_standin.sh"), STANDIN_LOG=standin_log, STANDIN_WORKER=worker)
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "demo-story.sh")], capture_output=True, text=True, timeout=120, env=env)
    stop.set()
    poller.join()
    grafana.shutdown()
    check("demo-story: tools/demo-story.sh exits 0 against the local api and worker", r.returncode == 0, (r.stdout + r.stderr)[-600:])
    tags = [json.loads(b)["tags"] for path, ctype, b in GrafanaAnnotations.posted
            if path == "/api/annotations" and ctype == "application/json"]
    check("demo-story: one Grafana annotation per phase, in order, tagged jobstack-story",
          [t[1] for t in tags] == ["steady", "failures", "slow", "broker-down", "recovery", "end"] and all(t[0] == "jobstack-story" for t in tags),
          str(tags))
    off = {"db_latency_ms": 0, "fail_percent": 0, "slow_consume_ms": 0}
    want = {"api": [off, dict(off, db_latency_ms=250), off], "worker": [off, dict(off, fail_percent=30), dict(off, slow_consume_ms=500), off]}
    for svc in ("api", "worker"):
        check(f"demo-story: the {svc}'s faults switched phase by phase and off at the end", seen[svc] == want[svc], str(seen[svc]))
    calls = open(standin_log).read().splitlines() if os.path.exists(standin_log) else []
    order = ["--profile load up -d loadgen", "stop rabbitmq", "start rabbitmq", "--profile load stop loadgen"]
    found = [c for c in calls if c in order]
    check("demo-story: loadgen up, RabbitMQ stopped then started, loadgen stopped (compose commands, in order)",
          found[:3] == order[:3] and found[-1] == order[-1], str(calls))


def job_status(api, job_id):
    st, body, _ = curl("GET", f"{api}/jobs/{job_id}")
    return json.loads(body).get("status") if st == 200 else f"http {st}"


def jobs_in_every_state(api):
    """Leaves jobs in every state for the Jobs explorer: succeeded, failed, scheduled (delay_ms),
    running (a long sleep in every worker slot), queued behind them, and one cancelled while queued.
    Each is followed (GET /jobs/{id}) until it is in its state. Returns the running jobs' ids."""
    def submit(body):
        st, text, _ = curl("POST", f"{api}/jobs", body)
        return (json.loads(text)["id"], "") if st == 202 else (None, f"POST /jobs answered {st}: {text[:300]}")

    def reach(job_id, want, timeout=60):
        try:
            return wait_for(f"job {job_id} {want}", lambda: job_status(api, job_id) == want and want, timeout)
        except TimeoutError:
            return f"still {job_status(api, job_id)} after {timeout}s"

    quick = {"duration_ms": 50, "steps": 1}
    for body, want in (({"kind": "sleep", "payload": quick}, "succeeded"), ({"kind": "fail", "payload": {"transient": False}}, "failed"),
                       # DESIGN.md: `delay_ms` (or `run_at`) delays a job. An api without it answers 422, and
                       # the explorer check then says the scheduled state is missing.
                       ({"kind": "sleep", "payload": quick, "delay_ms": 3_600_000}, "scheduled")):
        job_id, why = submit(body)
        got = reach(job_id, want) if job_id else why
        check(f"live: {json.dumps(body)} -> {want}", got == want, got)
    # sleep allows at most 300 s in 100 steps (jobs-contract); the run is over long before.
    long = {"kind": "sleep", "payload": {"duration_ms": 300_000, "steps": 100}}
    running = [submit(long)[0] for _ in range(WORKER_CONCURRENCY)]
    got = [reach(j, "running") if j else "not accepted" for j in running]
    check(f"live: {WORKER_CONCURRENCY} long sleeps running, one per worker slot (prefetch = WORKER_CONCURRENCY)",
          got == ["running"] * WORKER_CONCURRENCY, str(got))
    # With every slot taken, the next two wait in the queue; cancelling one of them is the signal
    # that the api has handled what it was sent, after which the other must still be queued.
    queued, cancelled = submit({"kind": "sleep", "payload": quick})[0], submit({"kind": "sleep", "payload": quick})[0]
    st = curl("POST", f"{api}/jobs/{cancelled}/cancel")[0] if cancelled else 0
    got = reach(cancelled, "cancelled") if st == 202 else f"cancel answered {st}"
    check("live: a queued job cancelled (POST /jobs/{id}/cancel) -> cancelled", got == "cancelled", got)
    got = job_status(api, queued) if queued else "not accepted"
    check("live: a job behind the busy worker slots is still queued", got == "queued", got)
    return [j for j in running if j]


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as e:  # noqa: BLE001 - report, don't crash without a result line
        check("live: run completed", False, f"{type(e).__name__}: {e}")
        rc = 1
    sys.exit(rc)

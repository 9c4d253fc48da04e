"""The deployment policies, checked on what `kubectl kustomize` renders (never on the sources).

Each policy is a function of a `Render` (rendered.py) returning its problems: empty when it holds.
"""

from __future__ import annotations

import re
import urllib.parse

from rendered import CNPG_METRICS_PORT, CNPG_POD_LABEL, OUR_IMAGE, RABBITMQ_SERVICE_PORTS, RABBITMQ_TLS_PORTS, Render, label


def probes(r: Render) -> list[str]:
    """Every container has startup, readiness and liveness probes; ours GET /healthz and /readyz."""
    problems = []
    want = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for w, _, c in r.containers():
        ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
        for probe, path in want.items():
            p = c.get(probe)
            if not p:
                problems.append(f"{label(w, c)}: no {probe}")
            elif OUR_IMAGE.search(c["image"]):
                get = p.get("httpGet") or {}
                if get.get("path") != path or get.get("port") not in ports:
                    problems.append(f"{label(w, c)}: {probe} must GET {path} on a container port, has {p}")
    return problems


def resources(r: Render) -> list[str]:
    """CPU and memory requests and limits on every container and on the operators' clusters."""
    problems = []
    subjects = [(label(w, c), c.get("resources") or {}) for w, _, c in r.containers()]
    subjects += [(f"{o['kind']}/{o['metadata']['name']}", o["spec"].get("resources") or {}) for o in r.rabbitmq_clusters() + r.pg_clusters()]
    for who, res in subjects:
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(kind) or {}):
                    problems.append(f"{who}: no resources.{kind}.{what}")
    return problems


def security(r: Render) -> list[str]:
    """Non-root, no privilege escalation, read-only root filesystem, no capabilities, seccomp."""
    problems = []
    for w, pod, c in r.containers():
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        eff = {**psc, **csc}
        if eff.get("runAsNonRoot") is not True:
            problems.append(f"{label(w, c)}: runAsNonRoot is not true")
        if not isinstance(eff.get("runAsUser"), int) or eff["runAsUser"] == 0:
            problems.append(f"{label(w, c)}: no numeric non-zero runAsUser (a named USER cannot be verified non-root)")
        if csc.get("allowPrivilegeEscalation") is not False or csc.get("privileged"):
            problems.append(f"{label(w, c)}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{label(w, c)}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{label(w, c)}: capabilities do not drop ALL")
        if (eff.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{label(w, c)}: no RuntimeDefault seccomp profile")
    return problems


def _tag(image: str) -> str | None:
    if "@sha256:" in image:
        return "digest"
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def images(r: Render) -> list[str]:
    """Every image has an exact tag or a digest, never `latest`; third-party ones match .env."""
    problems = []
    refs = [(label(w, c), c["image"]) for w, _, c in r.containers()]
    refs += [(f"RabbitmqCluster/{o['metadata']['name']}", o["spec"].get("image", "")) for o in r.rabbitmq_clusters()]
    refs += [(f"Cluster/{o['metadata']['name']}", o["spec"].get("imageName", "")) for o in r.pg_clusters()]
    for who, image in refs:
        tag = _tag(image)
        if not tag or tag == "latest":
            problems.append(f"{who}: image {image!r} is not pinned (needs an exact tag or a digest)")
    for who, image in refs:
        repo = image.rsplit(":", 1)[0]
        if repo in ("rabbitmq", "postgres"):
            pin = r.pins[f"{repo.upper()}_IMAGE"]
            if image != pin:
                problems.append(f"{who}: {image} differs from .env {pin}")
        if "cloudnative-pg/postgresql:" in image:
            want = r.pins["POSTGRES_IMAGE"].split(":", 1)[1]
            if not image.split(":", 1)[1].startswith(want + "-"):
                problems.append(f"{who}: {image} is not PostgreSQL {want} (.env POSTGRES_IMAGE)")
    if r.name == "production":
        for w, _, c in r.ours():
            if not c["image"].startswith("ghcr.io/") or re.search(r"your-org|example|changeme", c["image"]):
                problems.append(f"{label(w, c)}: {c['image']} is a placeholder, not the release workflow's ghcr.io/<owner>/<repository>")
    if r.name == "local":
        for w, _, c in r.ours():
            if c["image"] != r.pins["JOBSTACK_IMAGE"]:
                problems.append(f"{label(w, c)}: {c['image']} is not what compose builds (.env JOBSTACK_IMAGE={r.pins['JOBSTACK_IMAGE']})")
    return problems


# The code's own bounds on each stage of a stop, read from the source (seconds).
_BOUNDS = {
    "TEARDOWN": ("api/src/startup.rs", "the api's background tasks after the server"),
    "FLUSH_TIMEOUT": ("shared/src/telemetry/mod.rs", "the last spans' export"),
    "CLOSE_TIMEOUT": ("shared/src/amqp/mod.rs", "the broker connection's close"),
}
SHUTDOWN_MARGIN_SECS = 5


def _bound(name: str) -> int:
    import pathlib
    path, _ = _BOUNDS[name]
    text = (pathlib.Path(__file__).resolve().parents[2] / path).read_text()
    m = re.search(rf"const {name}: (?:std::time::)?Duration = (?:std::time::)?Duration::from_secs\((\d+)\)", text)
    if not m:
        raise ValueError(f"no `const {name}: Duration = Duration::from_secs(N)` in {path}")
    return int(m.group(1))


def shutdown(r: Render) -> list[str]:
    """terminationGracePeriodSeconds covers the worst-case stop the code allows, with a margin."""
    problems = []
    grace = int(r.config().get("SHUTDOWN_GRACE_SECS", "25"))
    # api: preStop, in-flight requests (grace), TEARDOWN, span flush; worker: preStop, running
    # jobs (grace), the connection's close, span flush (api/src/startup.rs, worker/src/lib.rs).
    stages = {"api": ("TEARDOWN", "FLUSH_TIMEOUT"), "worker": ("CLOSE_TIMEOUT", "FLUSH_TIMEOUT")}
    for w, pod, c in r.ours():
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        period = pod.get("terminationGracePeriodSeconds", 30)
        bounds = {n: _bound(n) for n in stages.get(c["name"], ("FLUSH_TIMEOUT",))}
        worst = sleep + grace + sum(bounds.values())
        if period < worst + SHUTDOWN_MARGIN_SECS:
            parts = " + ".join(f"{n} {v}" for n, v in bounds.items())
            problems.append(f"{w['kind']}/{w['metadata']['name']}: terminationGracePeriodSeconds {period} is under the worst-case stop "
                            f"(preStop {sleep} + SHUTDOWN_GRACE_SECS {grace} + {parts} = {worst}) + a {SHUTDOWN_MARGIN_SECS} s margin")
    return problems


def _env(r: Render, c: dict, values: dict[str, dict[str, str]]) -> tuple[dict[str, str], list[str]]:
    """The container's environment as the kubelet builds it, Secrets taken from `values`."""
    env, problems = dict(r.config()), []
    for e in c.get("env", []):
        if "value" in e:
            for ref in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e["value"]):
                if ref not in {x["name"] for x in c["env"][: c["env"].index(e)]}:
                    problems.append(f"{e['name']}: $({ref}) is not an earlier env entry, so it is not expanded")
            env[e["name"]] = re.sub(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = values.get(ref["name"], {}).get(ref["key"], "")
        else:
            env[e["name"]] = "x"
    return env, problems


def secrets(r: Render, values: dict[str, dict[str, str]]) -> list[str]:
    """No Secret is rendered; every secretKeyRef exists at run time; the URLs built from them work."""
    problems = [f"Secret/{s['metadata']['name']} is rendered: secrets are never committed" for s in r.of("Secret")]
    runtime = r.runtime_secrets()
    services = r.services()
    for w, pod, c in r.containers():
        refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        refs += [{"name": v["secret"]["secretName"], "key": i["key"]} for v in pod.get("volumes", []) if "secret" in v for i in v["secret"].get("items", [])]
        for ref in refs:
            if ref["key"] not in runtime.get(ref["name"], set()):
                problems.append(f"{label(w, c)}: Secret {ref['name']} key {ref['key']} is made by nothing")
    for name, data in values.items():
        conf = _conf(data.get("default_user.conf", ""))
        if conf and (conf.get("default_user"), conf.get("default_pass")) != (data.get("username"), data.get("password")):
            problems.append(f"Secret {name}: default_user.conf and username/password disagree")
    for w, _, c in r.ours():
        env, bad = _env(r, c, values)
        problems += [f"{label(w, c)}: {b}" for b in bad]
        amqp = urllib.parse.urlsplit(env.get("AMQP_URL", ""))
        vhost = urllib.parse.unquote(amqp.path[1:]) if amqp.path else "/"
        if amqp.scheme not in ("amqp", "amqps") or vhost != "/" or amqp.scheme not in services.get(amqp.hostname, set()):
            problems.append(f"{label(w, c)}: AMQP_URL {amqp.scheme}://…@{amqp.hostname}:{amqp.port}{amqp.path} is not amqp(s):// to a broker Service port of that name with vhost '/' (has {vhost!r})")
        if "DATABASE_URL" in env:
            db = urllib.parse.urlsplit(env["DATABASE_URL"])
            if db.scheme not in ("postgres", "postgresql") or (db.hostname or "").split(".")[0] not in services:
                problems.append(f"{label(w, c)}: DATABASE_URL {db.scheme}://…@{db.hostname}{db.path} is not postgres:// to a PostgreSQL Service")
    return problems


def services(r: Render) -> list[str]:
    """Each Service and PodDisruptionBudget selects pods that have the target ports."""
    problems = []
    pods = [(w, w["spec"]["template"]) for w in r.workloads()]
    # The RabbitMQ operator's pods, as it labels them (cluster-operator internal/metadata/label.go).
    pods += [(rc, {"metadata": {"labels": {"app.kubernetes.io/name": rc["metadata"]["name"], "app.kubernetes.io/component": "rabbitmq",
                                           "app.kubernetes.io/part-of": "rabbitmq"}}, "spec": {"containers": []}})
             for rc in r.rabbitmq_clusters()]
    for s in r.of("Service") + r.of("PodDisruptionBudget"):
        sel = s["spec"]["selector"] if s["kind"] == "Service" else s["spec"]["selector"]["matchLabels"]
        hits = [(w, t) for w, t in pods if sel.items() <= t["metadata"].get("labels", {}).items()]
        if not hits:
            problems.append(f"{s['kind']}/{s['metadata']['name']}: selects no pod")
        for p in s["spec"].get("ports", []):
            names = {q.get("name") for _, t in hits for c in t["spec"]["containers"] for q in c.get("ports", [])}
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                problems.append(f"Service/{s['metadata']['name']}: targetPort {p['targetPort']} is no container port")
    return problems


def keda(r: Render) -> list[str]:
    """The ScaledObject scales the worker on AMQP_PREFIX.jobs, through the broker's management API."""
    problems = []
    prefix = r.config().get("AMQP_PREFIX", "jobstack")
    for so in r.of("ScaledObject"):
        target = r.named("Deployment", so["spec"]["scaleTargetRef"]["name"])
        if target is None or not any(OUR_IMAGE.search(c["image"]) and c["name"] == "worker" for c in target["spec"]["template"]["spec"]["containers"]):
            problems.append(f"ScaledObject/{so['metadata']['name']}: does not target the worker Deployment")
        elif "replicas" in target["spec"]:
            problems.append(f"Deployment/{target['metadata']['name']}: sets replicas, which every apply would reset under KEDA")
        for t in so["spec"]["triggers"]:
            m = t.get("metadata", {})
            if t["type"] != "rabbitmq":
                continue
            if m.get("queueName") != f"{prefix}.jobs":
                problems.append(f"ScaledObject/{so['metadata']['name']}: queueName {m.get('queueName')!r} is not AMQP_PREFIX + '.jobs' = {prefix + '.jobs'!r}")
            if m.get("mode") != "QueueLength" or m.get("protocol") != "http":
                problems.append(f"ScaledObject/{so['metadata']['name']}: needs mode QueueLength over protocol http (only the management API counts unacked jobs)")
            host = urllib.parse.urlsplit(m.get("host", ""))
            clusters = {f"{c['metadata']['name']}.{r.namespace()}.svc" for c in r.rabbitmq_clusters()}
            if host.hostname not in clusters or host.port != RABBITMQ_SERVICE_PORTS["management"] or host.path not in ("/", "/%2F", "/%2f"):
                problems.append(f"ScaledObject/{so['metadata']['name']}: host {m.get('host')!r} is not http://<RabbitmqCluster>.{r.namespace()}.svc:15672/ (one of {sorted(clusters)})")
            auth = r.named("TriggerAuthentication", (t.get("authenticationRef") or {}).get("name", ""))
            if auth is None:
                problems.append(f"ScaledObject/{so['metadata']['name']}: authenticationRef names no rendered TriggerAuthentication")
            else:
                runtime = r.runtime_secrets()
                for ref in auth["spec"].get("secretTargetRef", []):
                    if ref["key"] not in runtime.get(ref["name"], set()):
                        problems.append(f"TriggerAuthentication/{auth['metadata']['name']}: Secret {ref['name']} key {ref['key']} is made by nothing")
            # One replica per prefetch window (worker/src/intake.rs: 2 x WORKER_CONCURRENCY): a
            # smaller target asks for replicas that get no message.
            window = 2 * int(r.config().get("WORKER_CONCURRENCY", "8"))
            if m.get("value") != str(window):
                problems.append(f"ScaledObject/{so['metadata']['name']}: value {m.get('value')!r} is not a worker's prefetch window, 2 x WORKER_CONCURRENCY = {window}")
        fallback = so["spec"].get("fallback") or {}
        if not (fallback.get("failureThreshold") and fallback.get("replicas", 0) >= so["spec"].get("minReplicaCount", 0)):
            problems.append(f"ScaledObject/{so['metadata']['name']}: no fallback (blind to the queue, KEDA would freeze the count)")
        if so["spec"].get("minReplicaCount", 0) < 2:
            problems.append(f"ScaledObject/{so['metadata']['name']}: minReplicaCount {so['spec'].get('minReplicaCount', 0)}: a drain would leave no consumer")
        if target is not None and not _pdb_covers(r, target["spec"]["template"]["metadata"].get("labels", {})):
            problems.append(f"Deployment/{target['metadata']['name']}: no PodDisruptionBudget allowing at most one eviction")
    return problems


def _pdb_covers(r: Render, pod_labels: dict) -> bool:
    """A PodDisruptionBudget selects these pods and lets at most one go at a time."""
    for pdb in r.of("PodDisruptionBudget"):
        sel = (pdb["spec"].get("selector") or {}).get("matchLabels") or {}
        if sel and all(pod_labels.get(k) == v for k, v in sel.items()) and pdb["spec"].get("maxUnavailable") == 1:
            return True
    return False


def spread(r: Render) -> list[str]:
    """The api and worker replicas spread across nodes (and zones where there are)."""
    problems = []
    for w in r.workloads():
        if not any(OUR_IMAGE.search(c["image"]) for c in w["spec"]["template"]["spec"]["containers"]):
            continue
        labels = w["spec"]["template"]["metadata"].get("labels", {})
        keys = {t.get("topologyKey") for t in w["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
                if all(labels.get(k) == v for k, v in ((t.get("labelSelector") or {}).get("matchLabels") or {}).items())
                and (t.get("labelSelector") or {}).get("matchLabels")}
        if not {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys:
            problems.append(f"{w['kind']}/{w['metadata']['name']}: no topologySpreadConstraints over hostname and zone selecting its own pods (has {sorted(k for k in keys if k)})")
    return problems


def admission(r: Render) -> list[str]:
    """The namespace enforces a Pod Security Admission level."""
    problems = []
    for ns in r.of("Namespace"):
        labels = ns["metadata"].get("labels", {})
        if labels.get("pod-security.kubernetes.io/enforce") not in ("baseline", "restricted"):
            problems.append(f"Namespace/{ns['metadata']['name']}: no pod-security.kubernetes.io/enforce (baseline or restricted)")
        if labels.get("pod-security.kubernetes.io/warn") != "restricted":
            problems.append(f"Namespace/{ns['metadata']['name']}: pod-security.kubernetes.io/warn is not restricted (our pods meet it)")
    if not r.of("Namespace"):
        problems.append("no Namespace rendered")
    return problems


def autoscaling(r: Render) -> list[str]:
    """The api HPA targets the api without a fixed replica count and fits max_connections."""
    problems = []
    for h in r.of("HorizontalPodAutoscaler"):
        target = r.named("Deployment", h["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"HorizontalPodAutoscaler/{h['metadata']['name']}: targets nothing rendered")
            continue
        if "replicas" in target["spec"]:
            problems.append(f"Deployment/{target['metadata']['name']}: sets replicas, which every apply would reset under the HPA")
        pool = int(r.config().get("DB_MAX_CONNECTIONS", "10"))
        for pg in r.pg_clusters():
            limit = int(((pg["spec"].get("postgresql") or {}).get("parameters") or {}).get("max_connections", "100"))
            if h["spec"]["maxReplicas"] * pool > limit - 10:
                problems.append(f"HorizontalPodAutoscaler/{h['metadata']['name']}: {h['spec']['maxReplicas']} x DB_MAX_CONNECTIONS {pool} leaves under 10 of max_connections {limit}")
    return problems


def _conf(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (raw.split("#")[0].strip().replace(" = ", "=") for raw in text.splitlines()) if "=" in line)


def broker(r: Render) -> list[str]:
    """consumer_timeout at least a minute and ten times a job message's longest hold (the
    attempt's first 100 ms and its `started` confirm, PUBLISH_TIMEOUT_MS), and equal to compose's;
    the two plugins on."""
    problems = []
    floor_ms = max(60_000, 10 * (int(r.config().get("PUBLISH_TIMEOUT_MS", "5000")) + 100))
    confs = [(f"RabbitmqCluster/{o['metadata']['name']}", o["spec"].get("rabbitmq", {}).get("additionalConfig", "")) for o in r.rabbitmq_clusters()]
    for cm in r.of("ConfigMap"):
        if "rabbitmq.conf" in cm.get("data", {}):
            confs.append((f"ConfigMap/{cm['metadata']['name']}", cm["data"]["rabbitmq.conf"]))
            plugins = cm["data"].get("enabled_plugins", "")
            if "rabbitmq_management" not in plugins or "rabbitmq_prometheus" not in plugins:
                problems.append(f"ConfigMap/{cm['metadata']['name']}: enabled_plugins lacks rabbitmq_management or rabbitmq_prometheus")
    compose = _conf(r.compose_rabbitmq_conf).get("consumer_timeout")
    for who, text in confs:
        timeout = _conf(text).get("consumer_timeout")
        if timeout is None or int(timeout) < floor_ms:
            problems.append(f"{who}: consumer_timeout {timeout} ms is below {floor_ms} ms (a job message's hold, ten times)")
        elif timeout != compose:
            problems.append(f"{who}: consumer_timeout {timeout} differs from compose's {compose}")
    if not confs:
        problems.append("no broker configuration rendered")
    return problems


def replication(r: Render) -> list[str]:
    """Three RabbitMQ nodes on three hosts under a PDB, three PostgreSQL instances, commits replicated."""
    problems = []
    for o in r.rabbitmq_clusters():
        name = o["metadata"]["name"]
        if o["spec"].get("replicas", 1) < 3 or o["spec"].get("replicas", 1) % 2 == 0:
            problems.append(f"RabbitmqCluster/{name}: replicas {o['spec'].get('replicas', 1)}: quorum queues need an odd number, at least 3")
        # The operator labels its pods app.kubernetes.io/name=<cluster> (internal/metadata/label.go).
        if not _pdb_covers(r, {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq"}):
            problems.append(f"RabbitmqCluster/{name}: no PodDisruptionBudget allowing at most one eviction (the operator makes none)")
        required = ((o["spec"].get("affinity") or {}).get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
        if not any(t.get("topologyKey") == "kubernetes.io/hostname"
                   and ((t.get("labelSelector") or {}).get("matchLabels") or {}).get("app.kubernetes.io/name") == name for t in required):
            problems.append(f"RabbitmqCluster/{name}: no required anti-affinity on kubernetes.io/hostname: two nodes on one host lose the majority together")
    for o in r.pg_clusters():
        name = o["metadata"]["name"]
        if o["spec"]["instances"] < 3:
            problems.append(f"Cluster/{name}: instances {o['spec']['instances']}: failover wants at least 3")
        sync = (o["spec"].get("postgresql") or {}).get("synchronous") or {}
        if not sync or sync.get("dataDurability", "required") != "required" or not 1 <= sync.get("number", 0) < o["spec"]["instances"]:
            problems.append(f"Cluster/{name}: replication is not synchronous with dataDurability required "
                            f"({sync or 'asynchronous'}): a failover could lose jobs already answered 202")
    return problems


def monitors(r: Render) -> list[str]:
    """Each ServiceMonitor / PodMonitor selects something with the named port, over HTTPS where it is a TLS port."""
    problems = []
    targets = []  # (labels, port names)
    for s in r.of("Service"):
        targets.append(("Service", s["metadata"].get("labels", {}), {p.get("name") for p in s["spec"]["ports"]}))
    for rc in r.rabbitmq_clusters():
        name = rc["metadata"]["name"]
        targets.append(("Service", {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq", "app.kubernetes.io/part-of": "rabbitmq"}, r.services()[name]))
    for w in r.workloads():
        t = w["spec"]["template"]
        targets.append(("Pod", t["metadata"].get("labels", {}), {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}))
    for pg in r.pg_clusters():
        targets.append(("Pod", {CNPG_POD_LABEL: pg["metadata"]["name"]}, {CNPG_METRICS_PORT}))
    for kind, endpoints, what in (("ServiceMonitor", "endpoints", "Service"), ("PodMonitor", "podMetricsEndpoints", "Pod")):
        for m in r.of(kind):
            sel = m["spec"]["selector"].get("matchLabels", {})
            hits = [ports for k, labels, ports in targets if k == what and sel.items() <= labels.items()]
            if not hits:
                problems.append(f"{kind}/{m['metadata']['name']}: selects no {what}")
            for e in m["spec"][endpoints]:
                if hits and not any(e.get("port") in ports for ports in hits):
                    problems.append(f"{kind}/{m['metadata']['name']}: port {e.get('port')} is on none of its {what}s")
                if str(e.get("port", "")).endswith("-tls") and (e.get("scheme") != "https" or not e.get("tlsConfig", {}).get("ca")):
                    problems.append(f"{kind}/{m['metadata']['name']}: port {e.get('port')} speaks HTTPS; the endpoint needs scheme https and a tlsConfig CA")
    return problems


def _monitor_jobs(r: Render) -> set[str]:
    """The `job` label each monitor endpoint's targets get: its relabelled value, else the
    operator's default (ServiceMonitor: the Service's name, here the selected one's; PodMonitor:
    `<namespace>/<name>`; prometheus-operator v0.93.0 pkg/prometheus/promcfg.go)."""
    jobs = set()
    for m in r.of("ServiceMonitor") + r.of("PodMonitor"):
        endpoints = m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints") or []
        for e in endpoints:
            set_job = [x.get("replacement") for x in e.get("relabelings", [])
                       if x.get("targetLabel") == "job" and x.get("action", "replace") == "replace" and not x.get("sourceLabels")]
            if set_job:
                jobs.add(set_job[-1])
            elif m["kind"] == "PodMonitor":
                jobs.add(f"{r.namespace()}/{m['metadata']['name']}")
            else:
                jobs.add(m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name", m["metadata"]["name"]))
    return jobs


def jobs(r: Render) -> list[str]:
    """Every job the alert rules and dashboards select is a job the rendered monitors produce."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2] / "observability"
    texts = [p.read_text() for p in sorted((root / "prometheus" / "rules").glob("*.yml"))]
    texts += [p.read_text() for p in sorted((root / "grafana" / "dashboards").glob("*.json"))]
    wanted = {m for t in texts for m in re.findall(r'job\\?="([^"\\]+)', t)}
    have = _monitor_jobs(r)
    return [f"job={j!r} is selected by the rules or dashboards, and no monitor produces it (monitors give {sorted(have)})"
            for j in sorted(wanted - have)]


def _broker_operations(prefix: str) -> dict[str, tuple[set, set]]:
    """(needed, forbidden) (permission, resource) pairs per user, from the topology both services
    declare (jobs-contract/src/topology.rs) and what each publishes and consumes. RabbitMQ's
    rules (docs/access-control.md): exchange.declare and queue.declare configure the object; a
    queue declared with a dead-letter exchange writes that exchange and reads the queue; queue.bind
    writes the queue and reads the exchange; basic.publish writes the exchange; basic.consume reads
    the queue."""
    p = prefix + "."
    exchanges = [p + "jobs", p + "dlx", p + "events", p + "control"]
    binds = [(p + "jobs", p + "jobs"), (p + "jobs.dead", p + "dlx"), (p + "api.events", p + "events"), (p + "control", p + "control")]
    declare = {("configure", n) for n in exchanges + [q for q, _ in binds]}
    declare |= {("write", p + "dlx"), ("read", p + "jobs")}
    declare |= {("write", q) for q, _ in binds} | {("read", e) for _, e in binds}
    return {
        "api": (declare | {("write", p + "jobs"), ("write", p + "control"), ("read", p + "api.events")},
                {("write", p + "events"), ("read", p + "jobs.dead"), ("configure", "other.jobs")}),
        "worker": (declare | {("write", p + "events"), ("write", p + "dlx"), ("write", p + "control"), ("read", p + "jobs"), ("read", p + "control")},
                   {("read", p + "api.events"), ("read", p + "jobs.dead"), ("configure", "other.jobs")}),
    }


def broker_users(r: Render) -> list[str]:
    """No workload or scaler logs in as the broker's administrator; each service's user may do what it needs and no more."""
    problems = []
    users = {u["metadata"]["name"]: u for u in r.of("User") if u["apiVersion"].startswith("rabbitmq.com/")}
    perms = {(p["spec"].get("userReference") or {}).get("name"): p for p in r.of("Permission")}
    admin_secrets = {rc["metadata"]["name"] + "-default-user" for rc in r.rabbitmq_clusters()}
    used = []  # (who, secret)
    for w, _, c in r.containers():
        for e in c.get("env", []):
            ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if ref and e["name"].startswith("AMQP"):
                used.append((label(w, c), ref))
    for t in r.of("TriggerAuthentication"):
        used += [(f"TriggerAuthentication/{t['metadata']['name']}", ref["name"]) for ref in t["spec"].get("secretTargetRef", [])]
    for who, secret in used:
        if secret in admin_secrets:
            problems.append(f"{who}: logs in with {secret}, the operator's administrator")
            continue
        user = users.get(secret.removesuffix("-user-credentials"))
        if user is None:
            problems.append(f"{who}: {secret} is no rendered User's credentials")
            continue
        if "administrator" in user["spec"].get("tags", []):
            problems.append(f"User/{user['metadata']['name']}: tagged administrator")
        if user["metadata"]["name"] not in perms:
            problems.append(f"User/{user['metadata']['name']}: no Permission (it could not even connect)")
    prefix = r.config().get("AMQP_PREFIX", "jobstack")
    for service, (needed, forbidden) in _broker_operations(prefix).items():
        perm = perms.get(f"jobstack-{service}")
        if perm is None:
            problems.append(f"no Permission for the {service}'s user jobstack-{service}")
            continue
        grants = perm["spec"]["permissions"]
        allows = lambda kind, name: bool(re.search(grants.get(kind) or "^$", name))  # noqa: E731
        missing = sorted(f"{k} {n}" for k, n in needed if not allows(k, n))
        extra = sorted(f"{k} {n}" for k, n in forbidden if allows(k, n))
        if missing:
            problems.append(f"Permission/{perm['metadata']['name']}: the {service} could not {', '.join(missing)}")
        if extra:
            problems.append(f"Permission/{perm['metadata']['name']}: the {service} may {', '.join(extra)}, which it never needs")
    keda = [u for u in users.values() if "monitoring" in u["spec"].get("tags", [])]
    for u in keda:
        grants = (perms.get(u["metadata"]["name"]) or {}).get("spec", {}).get("permissions", {})
        if any(grants.get(k) not in ("^$", "") for k in ("configure", "write", "read")):
            problems.append(f"User/{u['metadata']['name']}: a monitoring user with resource permissions {grants}")
    return problems


def backups(r: Render) -> list[str]:
    """Each PostgreSQL Cluster archives its WAL to a rendered ObjectStore and is backed up on a schedule."""
    problems = []
    plugin = "barman-cloud.cloudnative-pg.io"
    stores = {o["metadata"]["name"]: o for o in r.of("ObjectStore")}
    for pg in r.pg_clusters():
        name = pg["metadata"]["name"]
        archivers = [p for p in pg["spec"].get("plugins", []) if p.get("name") == plugin and p.get("isWALArchiver") and p.get("enabled", True)]
        if not archivers:
            problems.append(f"Cluster/{name}: no WAL archiving ({plugin} with isWALArchiver: true)")
        for p in archivers:
            store = stores.get((p.get("parameters") or {}).get("barmanObjectName"))
            if store is None:
                problems.append(f"Cluster/{name}: barmanObjectName {(p.get('parameters') or {}).get('barmanObjectName')!r} names no rendered ObjectStore")
            elif not store["spec"].get("retentionPolicy"):
                problems.append(f"ObjectStore/{store['metadata']['name']}: no retentionPolicy (the bucket grows for ever)")
        scheduled = [b for b in r.of("ScheduledBackup") if b["spec"]["cluster"]["name"] == name
                     and b["spec"].get("method") == "plugin" and (b["spec"].get("pluginConfiguration") or {}).get("name") == plugin]
        if not scheduled:
            problems.append(f"Cluster/{name}: no ScheduledBackup through {plugin}")
    return problems


def rules(r: Render) -> list[str]:
    """A PrometheusRule holds exactly the alert rules compose loads (tools/k8s_rules.py)."""
    import pathlib
    import sys
    root = pathlib.Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tools"))
    import k8s_rules
    found = r.of("PrometheusRule")
    if len(found) != 1:
        return [f"{len(found)} PrometheusRules rendered, want the one tools/k8s_rules.py writes"]
    if found[0]["spec"].get("groups") != k8s_rules.groups():
        return ["PrometheusRule/jobstack differs from observability/prometheus/rules/*.yml: run `make k8s-rules`"]
    return []


def telemetry(r: Render) -> list[str]:
    """Traces go over OTLP to a collector."""
    cfg = r.config()
    url = urllib.parse.urlsplit(cfg.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    if url.scheme not in ("http", "https") or not url.hostname or not url.port:
        return [f"OTEL_EXPORTER_OTLP_ENDPOINT {cfg.get('OTEL_EXPORTER_OTLP_ENDPOINT')!r} is no collector URL"]
    if cfg.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") not in ("grpc", "http/protobuf"):
        return [f"OTEL_EXPORTER_OTLP_PROTOCOL {cfg['OTEL_EXPORTER_OTLP_PROTOCOL']!r}"]
    return []


# ------------------------------------------------------------------ network policies
# Who talks to whom (deploy/k8s/overlays/production/network-policies.yaml says why): an entity is
# (namespace, pod labels); `None` as the namespace is outside the cluster (the Kubernetes API's
# address, an object store).
_API = ("jobstack", {"app.kubernetes.io/name": "jobstack-api"})
_WORKER = ("jobstack", {"app.kubernetes.io/name": "jobstack-worker"})
_RABBITMQ = ("jobstack", {"app.kubernetes.io/name": "jobstack-rabbitmq", "app.kubernetes.io/component": "rabbitmq"})
_DB = ("jobstack", {"cnpg.io/cluster": "jobstack-db"})
_INGRESS = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
_PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
_DNS = ("kube-system", {"k8s-app": "kube-dns"})
_OUTSIDE = (None, {})
FLOWS = [  # (from, to, protocol, port)
    (_INGRESS, _API, "TCP", 8080), (_PROMETHEUS, _API, "TCP", 8080), (_PROMETHEUS, _WORKER, "TCP", 8081),
    (_PROMETHEUS, _RABBITMQ, "TCP", 15691), (_PROMETHEUS, _DB, "TCP", 9187),
    (_API, _DB, "TCP", 5432), (_API, _RABBITMQ, "TCP", 5671), (_WORKER, _RABBITMQ, "TCP", 5671),
    (("keda", {"app": "keda-operator"}), _RABBITMQ, "TCP", 15672), (("rabbitmq-system", {}), _RABBITMQ, "TCP", 15672),
    (_RABBITMQ, _RABBITMQ, "TCP", 25672), (_RABBITMQ, _RABBITMQ, "TCP", 4369), (_DB, _DB, "TCP", 5432),
    (("cnpg-system", {}), _DB, "TCP", 8000), (_API, ("observability", {}), "TCP", 4317), (_WORKER, ("observability", {}), "TCP", 4317),
    (_API, _DNS, "UDP", 53), (_WORKER, _DNS, "UDP", 53), (_RABBITMQ, _DNS, "UDP", 53), (_DB, _DNS, "UDP", 53),
    (_RABBITMQ, _OUTSIDE, "TCP", 443), (_DB, _OUTSIDE, "TCP", 443),
]
DENIED = [
    (_WORKER, _DB, "TCP", 5432), (_INGRESS, _DB, "TCP", 5432), (_INGRESS, _RABBITMQ, "TCP", 5672), (_INGRESS, _WORKER, "TCP", 8081),
    (("default", {}), _API, "TCP", 8080), (_API, _RABBITMQ, "TCP", 15672), (("keda", {}), _DB, "TCP", 5432),
    (_API, _OUTSIDE, "TCP", 443), (_WORKER, _OUTSIDE, "TCP", 443), (("default", {}), _RABBITMQ, "TCP", 5672),
    (("default", {}), _RABBITMQ, "TCP", 15672),
    # AMQP without TLS: no one, our own pods included (tls.yaml).
    (_API, _RABBITMQ, "TCP", 5672), (_WORKER, _RABBITMQ, "TCP", 5672),
]


def _peer_matches(peer: dict, who: tuple, own_ns: str) -> bool:
    ns, labels = who
    if "ipBlock" in peer:
        return ns is None
    if ns is None:
        return False
    pods = peer.get("podSelector")
    nss = peer.get("namespaceSelector")
    sel = lambda s, have: all(have.get(k) == v for k, v in (s.get("matchLabels") or {}).items())  # noqa: E731
    in_ns = sel(nss, {"kubernetes.io/metadata.name": ns}) if nss is not None else ns == own_ns
    return in_ns and (pods is None or sel(pods, labels))


def _rule_allows(rule: dict, key: str, who: tuple, proto: str, port: int, own_ns: str) -> bool:
    peers = rule.get(key)
    if peers and not any(_peer_matches(p, who, own_ns) for p in peers):
        return False
    ports = rule.get("ports")
    return not ports or any(p.get("protocol", "TCP") == proto and p.get("port") in (port, None) for p in ports)


def _side_allows(r: Render, pod: tuple, direction: str, other: tuple, proto: str, port: int) -> bool:
    """Whether `pod` (in our namespace) may send (Egress) to / receive (Ingress) from `other`."""
    ns = r.namespace()
    selecting = [p for p in r.of("NetworkPolicy")
                 if direction in p["spec"].get("policyTypes", ["Ingress"])
                 and all(pod[1].get(k) == v for k, v in (p["spec"]["podSelector"].get("matchLabels") or {}).items())]
    if not selecting:
        return True  # no policy isolates the pod in this direction
    key, rules = ("to", "egress") if direction == "Egress" else ("from", "ingress")
    return any(_rule_allows(rule, key, other, proto, port, ns) for p in selecting for rule in p["spec"].get(rules, []))


def _allowed(r: Render, src: tuple, dst: tuple, proto: str, port: int) -> bool:
    ns = r.namespace()
    out = src[0] != ns or _side_allows(r, src, "Egress", dst, proto, port)
    inn = dst[0] != ns or _side_allows(r, dst, "Ingress", src, proto, port)
    return out and inn


def network(r: Render) -> list[str]:
    """Default deny; every flow the stack needs allowed at both ends, the ones it must not, denied."""
    problems = []
    if not any(p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in r.of("NetworkPolicy")):
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rule)")
    show = lambda who: f"{who[0] or 'outside'}/{','.join(f'{k}={v}' for k, v in who[1].items()) or '*'}"  # noqa: E731
    for src, dst, proto, port in FLOWS:
        if not _allowed(r, src, dst, proto, port):
            problems.append(f"needed flow blocked: {show(src)} -> {show(dst)} {proto}/{port}")
    for src, dst, proto, port in DENIED:
        if _allowed(r, src, dst, proto, port):
            problems.append(f"flow let in that should not be: {show(src)} -> {show(dst)} {proto}/{port}")
    return problems


def _api_routes() -> list[str]:
    """The api's routes: its access table (api/src/access/mod.rs RULES) and the console's (/ui)."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    rules = re.findall(r'\(\s*"[A-Z]+",\s*"(/[^"]*)",\s*Access::', (root / "api/src/access/mod.rs").read_text())
    console = re.findall(r'\.route\(\s*"(/ui[^"]*)"', (root / "api/src/console/mod.rs").read_text())
    return rules + console


def ingress(r: Render) -> list[str]:
    """An Ingress with TLS serves the api's routes and never /metrics or the probes."""
    problems = []
    routes = _api_routes()
    ings = r.of("Ingress")
    if not ings:
        problems.append("no Ingress for the api")
    for ing in ings:
        name = f"Ingress/{ing['metadata']['name']}"
        tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", []) if t.get("secretName")}
        for rule in ing["spec"].get("rules", []):
            if rule.get("host") not in tls_hosts:
                problems.append(f"{name}: host {rule.get('host')} not under tls with a secretName")
            for p in rule.get("http", {}).get("paths", []):
                path, kind = p.get("path", "/"), p.get("pathType")
                reaches = lambda target: target == path or (kind == "Prefix" and (path == "/" or target.startswith(path.rstrip("/") + "/")))  # noqa: E731
                for hidden in ("/metrics", "/healthz", "/readyz"):
                    if reaches(hidden):
                        problems.append(f"{name}: path {path} ({kind}) exposes {hidden}")
                if not any(reaches(route) or route == path for route in routes):
                    problems.append(f"{name}: path {path} is no api route")
                svc = p.get("backend", {}).get("service", {})
                if svc.get("name") != "jobstack-api" or svc.get("port", {}).get("name") != "http":
                    problems.append(f"{name}: path {path} goes to {svc}, not Service jobstack-api port http")
    return problems


def _mounted(pod: dict, c: dict, path: str | None) -> tuple[str, str] | None:
    """(Secret, key) of the file at `path` in container `c`, when a Secret volume item puts it there."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        secret = volumes.get(m["name"], {}).get("secret")
        for item in (secret or {}).get("items", []):
            if path == m["mountPath"].rstrip("/") + "/" + item["path"]:
                return secret["secretName"], item["key"]
    return None


def tls(r: Render, values: dict[str, dict[str, str]]) -> list[str]:
    """Our services reach RabbitMQ and PostgreSQL over TLS, verifying the server's certificate
    (issued by cert-manager for the very host they dial) against that certificate's own CA."""
    problems = []
    certs = {c["spec"]["secretName"]: c for c in r.of("Certificate")}
    issuers = {i["metadata"]["name"]: i for i in r.of("Issuer")}

    def ca_of(secret: str | None) -> str | None:
        """The CA Secret that signed the certificate cert-manager writes into `secret`."""
        ref = certs.get(secret, {}).get("spec", {}).get("issuerRef", {})
        issuer = issuers.get(ref.get("name")) if ref.get("kind", "Issuer") == "Issuer" else None
        return (issuer or {}).get("spec", {}).get("ca", {}).get("secretName")

    def check(who: str, host: str | None, server: str | None, trust: tuple[str, str] | None, var: str) -> None:
        if server not in certs:
            problems.append(f"{who}: {host} serves no certificate from a cert-manager Certificate (has {server!r})")
            return
        if host not in certs[server]["spec"].get("dnsNames", []):
            problems.append(f"{who}: {host} is not a dnsName of Certificate/{certs[server]['metadata']['name']}")
        if not ca_of(server):
            problems.append(f"{who}: Certificate/{certs[server]['metadata']['name']} is not issued by a CA Issuer")
        elif trust is None or trust[1] != "ca.crt" or ca_of(trust[0]) != ca_of(server):
            problems.append(f"{who}: {var} is not the ca.crt of a certificate from {server}'s CA (has {trust})")

    brokers = {rc["metadata"]["name"]: rc for rc in r.rabbitmq_clusters()}
    databases = {pg["metadata"]["name"] + "-rw": pg for pg in r.pg_clusters()}
    for rc in brokers.values():
        if rc["spec"].get("tls", {}).get("disableNonTLSListeners"):
            problems.append(f"RabbitmqCluster/{rc['metadata']['name']}: disableNonTLSListeners also moves the management API (KEDA, the operators) to HTTPS")
    for w, pod, c in r.ours():
        who, (env, _) = label(w, c), _env(r, c, values)
        amqp = urllib.parse.urlsplit(env.get("AMQP_URL", ""))
        if amqp.scheme != "amqps" or amqp.port != RABBITMQ_TLS_PORTS["amqps"]:
            problems.append(f"{who}: AMQP_URL is {amqp.scheme}://…:{amqp.port}, not amqps:// on 5671")
        server = brokers.get(amqp.hostname, {}).get("spec", {}).get("tls", {}).get("secretName")
        check(who, amqp.hostname, server, _mounted(pod, c, env.get("AMQP_CA_FILE")), "AMQP_CA_FILE")
        if "DATABASE_URL" not in env:
            continue
        host = urllib.parse.urlsplit(env["DATABASE_URL"]).hostname or ""
        if env.get("PGSSLMODE") != "verify-full":
            problems.append(f"{who}: PGSSLMODE is {env.get('PGSSLMODE')!r}, not verify-full (the server's name unchecked)")
        certificates = databases.get(host.split(".")[0], {}).get("spec", {}).get("certificates", {})
        check(who, host, certificates.get("serverTLSSecret"), _mounted(pod, c, env.get("PGSSLROOTCERT")), "PGSSLROOTCERT")
        if ca_of(certificates.get("serverCASecret")) != ca_of(certificates.get("serverTLSSecret")):
            problems.append(f"{who}: the Cluster's serverCASecret is not the CA of its serverTLSSecret")
    return problems

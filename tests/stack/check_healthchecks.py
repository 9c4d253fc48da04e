#!/usr/bin/env python3
"""Our own services' compose health checks, executed for real (`make stack-check`).

For every service of docker-compose.yml built from our Dockerfile that has a health check (read
from the model the real Compose CLI resolves, so a new service is picked up from the file), this
starts the service as compose would — its `command` and `environment`, with `/usr/local/bin/X`
mapped to `target/debug/X` (or `$CARGO_TARGET_DIR/debug/X`) and the compose host names mapped to
local stand-ins — and runs the exact `healthcheck.test` in each state, bounded by the compose
`timeout`:

  ready                                   -> exit 0
  each dependency down (a TCP proxy in front of the local PostgreSQL / RabbitMQ is closed)
                                          -> the answer documented in README "Health checks"
  dependency back                         -> exit 0
  hung (SIGSTOP: the port accepts, nothing answers) -> non-zero within the timeout
  gone (SIGTERM, exited)                  -> non-zero within the timeout

Each run prints the command, its exit code and its time. Needs COMPOSE_BIN (run.sh installs it),
target/debug binaries, the local PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672).
Everything it starts, its database and its queues are removed on exit.
"""
import atexit
import os
import random
import re
import select
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.parse

from stacklib import compose_config, delete_broker_objects, free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SUFFIX = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
PREFIX = f"hc_{SUFFIX}"
BIN_DIR = "/usr/local/bin/"  # where the Dockerfile's runtime stage puts our binaries
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
UPSTREAM = {"postgres": ("127.0.0.1", 5432), "rabbitmq": ("127.0.0.1", 5672)}
# What `healthcheck` answers while a dependency is down, per service (README "Health checks").
# A pair missing here fails the run: document the answer for a new service or dependency.
EXPECT_WHEN_DOWN = {
    ("api", "postgres"): "non-zero",   # nothing can be accepted durably
    ("api", "rabbitmq"): 0,            # still accepts jobs: the outbox publishes them later
    ("worker", "rabbitmq"): "non-zero",  # a worker without its broker does nothing
}
failed = 0
procs, databases = [], []


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"ok - {name}" if ok else f"not ok - {name}: {detail}", flush=True)


def note(msg):
    print(f"# {msg}", flush=True)


def seconds(duration):
    """A compose duration (`3s`, `1m30s`, `500ms`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    return sum(float(n) * units[u] for n, u in parts)


class Proxy:
    """A TCP forwarder to a real server; `down()` closes the port and every connection."""

    def __init__(self, upstream):
        self.upstream, self.port, self.conns, self.listener = upstream, free_port(), [], None
        self.up()

    def up(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []

    def _accept(self, listener):
        while True:
            try:
                inbound, _ = listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                inbound.close()
                continue
            self.conns += [inbound, outbound]
            threading.Thread(target=self._pipe, args=(inbound, outbound), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [])
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()


def compose_model():
    model, err = compose_config("-f", "docker-compose.yml")
    if model is None:
        raise SystemExit(f"not ok - docker compose config: {err[-400:]}")
    return model


def local(argv):
    """A command of the image with our binaries' image paths mapped to the local build."""
    return [os.path.join(TARGET, "debug", a[len(BIN_DIR):]) if a.startswith(BIN_DIR) else a for a in argv]


def local_env(environment, proxies, listen_port):
    """The compose environment with compose host names mapped to this machine's stand-ins."""
    env = {}
    for k, v in (environment or {}).items():
        v = v or ""
        if k.startswith("OTEL_EXPORTER_OTLP"):
            continue  # no Jaeger here; traces stay off
        for host, proxy in proxies.items():
            v = re.sub(rf"@{host}:\d+", f"@127.0.0.1:{proxy.port}", v)
        if k == "DATABASE_URL":
            v = urllib.parse.urlsplit(v)._replace(path=f"/{PREFIX}").geturl()  # a database of its own
        if k == "AMQP_PREFIX":
            v = PREFIX
        if k.endswith("_LISTEN"):
            v = re.sub(r":\d+$", f":{listen_port}", v)  # keep the compose host (0.0.0.0): the probe maps it
        env[k] = v
    return env


def run_check(name, test, env, timeout):
    """Runs a compose `healthcheck.test` as Docker does (CMD: exec, no shell); (code, secs, output)."""
    kind, argv = test[0], test[1:]
    if kind != "CMD":
        return None, 0.0, f"{kind} health checks need a shell, which our distroless image lacks"
    cmd = local(argv)
    start = time.monotonic()
    try:
        r = subprocess.run(cmd, env=dict(env, PATH="/usr/bin:/bin"), capture_output=True, text=True, timeout=timeout)
        code, out = r.returncode, (r.stdout + r.stderr).strip()
    except subprocess.TimeoutExpired:
        code, out = "timeout", f"killed after {timeout}s (Docker counts this as a failure)"
    took = time.monotonic() - start
    shown = " ".join(f"{k}={v}" for k, v in env.items() if k.endswith("_LISTEN"))
    note(f"{name}: $ {shown} {' '.join(argv)}  -> exit {code} in {took:.2f}s: {out.splitlines()[0][:160] if out else ''}")
    return code, took, out


def matches(code, want):
    """Whether an exit `code` is the `want`ed answer: 0, or "non-zero" (a real exit, not a kill)."""
    return code == want if want == 0 else code not in (0, None, "timeout")


def wait_state(name, test, env, timeout, want, needle=None, within=30):
    """Runs the check until its output contains `needle` (the service has seen the change) and
    it answers `want`, or `within` seconds pass; returns the last run and whether `needle` showed."""
    deadline = time.monotonic() + within
    while True:
        code, took, out = run_check(name, test, env, timeout)
        seen = needle is None or needle in out
        if (seen and matches(code, want)) or time.monotonic() > deadline:
            return code, took, out, seen
        time.sleep(0.5)


def exercise(name, svc, proxies):
    hc = svc["healthcheck"]
    test, timeout = hc["test"], seconds(hc.get("timeout", "30s"))
    port = free_port()
    env = local_env(svc.get("environment"), proxies, port)
    service_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")} | env | {"RUST_BACKTRACE": "0"}
    cmd = local(svc.get("command") or [])
    if not cmd or not os.access(cmd[0], os.X_OK):
        check(f"{name}: its compose command runs here ({cmd})", False, "binary not built (run.sh builds target/debug)")
        return
    if "DATABASE_URL" in env:
        databases.append(PREFIX)
    log = open(os.path.join(os.environ.get("STACK_STATE", "/tmp"), f"hc-{name}-{SUFFIX}.log"), "w")
    p = subprocess.Popen(cmd, env=service_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    if os.environ.get("STACK_STATE"):
        with open(os.path.join(os.environ["STACK_STATE"], "pids"), "a") as f:
            f.write(f"{p.pid}\n")
    start_period = seconds(hc.get("start_period", "0s")) + seconds(hc.get("interval", "30s")) * hc.get("retries", 3)
    code, took, out, _ = wait_state(name, test, env, timeout, 0, '"status":"ready"', within=min(start_period, 60))
    check(f"{name}: health check exits 0 when ready ({took:.2f}s)", code == 0 and took < timeout, out[:300])
    if code != 0:
        return
    deps = sorted(d for d in (svc.get("depends_on") or {}) if d in proxies)
    for dep in deps:
        want = EXPECT_WHEN_DOWN.get((name, dep))
        if want is None:
            check(f"{name}: documented answer while {dep} is down", False, f"add ({name!r}, {dep!r}) to EXPECT_WHEN_DOWN and README")
            continue
        proxies[dep].down()
        code, took, out, seen = wait_state(name, test, env, timeout, want, f'"{dep}":"down"')
        check(f"{name}: health check exits {want} while {dep} is down and names it ({took:.2f}s)",
              seen and matches(code, want) and took < timeout, f"exit {code}: {out[:300]}")
        proxies[dep].up()
        code, took, out, _ = wait_state(name, test, env, timeout, 0, '"status":"ready"', within=60)
        check(f"{name}: health check exits 0 again once {dep} is back ({took:.2f}s)", code == 0, out[:300])
    os.kill(p.pid, signal.SIGSTOP)  # hung: the kernel still accepts on the port, nothing answers
    code, took, out = run_check(name, test, env, timeout)
    os.kill(p.pid, signal.SIGCONT)
    check(f"{name}: health check is non-zero within {timeout:g}s when the process hangs ({took:.2f}s)",
          matches(code, "non-zero") and took < timeout, f"exit {code}: {out[:300]}")
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
    code, took, out = run_check(name, test, env, timeout)
    check(f"{name}: health check is non-zero within {timeout:g}s once the process is gone ({took:.2f}s)",
          matches(code, "non-zero") and took < timeout, f"exit {code}: {out[:300]}")


def cleanup():
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
    for db in databases:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qAt", "-c", f'drop database if exists "{db}" with (force)'],
                       capture_output=True, timeout=30)
    # The broker is shared: remove this run's queues and exchanges.
    delete_broker_objects(PREFIX)


def main():
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    model = compose_model()
    own = {n: s for n, s in model["services"].items() if "build" in s}
    checked = {n: s for n, s in own.items() if s.get("healthcheck", {}).get("test") and not s["healthcheck"].get("disable")}
    note(f"our own services with a health check (from docker-compose.yml): {sorted(checked)}; without: {sorted(set(own) - set(checked))}")
    check("compose: at least the api and the worker have health checks of their own", {"api", "worker"} <= set(checked), str(sorted(checked)))
    proxies = {name: Proxy(addr) for name, addr in UPSTREAM.items()}
    for name in sorted(checked, key=lambda n: n != "api"):  # the api first: it creates the database
        exercise(name, checked[name], proxies)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as e:  # noqa: BLE001 - report, don't crash without a result line
        check("health checks: run completed", False, f"{type(e).__name__}: {e}")
        rc = 1
    sys.exit(rc)

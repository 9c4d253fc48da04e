"""What the stack-check scripts share (standard library only): the env files, the models the
real Compose CLI resolves, a free port, and removing a run's objects from the shared broker."""
import json
import os
import socket
import subprocess
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read_env(path=os.path.join(ROOT, ".env")):
    """KEY=value lines of an env file (comments and blank lines skipped, quotes stripped)."""
    env = {}
    for line in open(path) if os.path.exists(path) else []:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip().strip("'\"")
    return env


def compose_config(*args):
    """`docker compose --project-directory ROOT ARGS… config --format json` (COMPOSE_BIN, as run.sh
    installs it, else docker-compose): (model, ""), or (None, its error)."""
    binary = os.environ.get("COMPOSE_BIN", "docker-compose")
    r = subprocess.run([binary, "--project-directory", ROOT, *args, "config", "--format", "json"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    return (json.loads(r.stdout), "") if r.returncode == 0 else (None, r.stderr.strip())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def delete_broker_objects(prefix, api="http://127.0.0.1:15672/api", auth="guest:guest"):
    """Deletes the queues and exchanges named `prefix.*` on the local broker (management API)."""
    for kind in ("queues", "exchanges"):
        r = subprocess.run(["curl", "-sS", "-m", "10", "-u", auth, f"{api}/{kind}/%2f?columns=name"],
                           capture_output=True, text=True)
        try:
            names = [o["name"] for o in json.loads(r.stdout or "[]") if o["name"].startswith(prefix + ".")]
        except (ValueError, TypeError, KeyError):
            names = []
        for name in names:
            subprocess.run(["curl", "-sS", "-m", "10", "-u", auth, "-X", "DELETE",
                            f"{api}/{kind}/%2f/{urllib.parse.quote(name, safe='')}"], capture_output=True)

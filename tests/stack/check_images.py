#!/usr/bin/env python3
"""What each pinned image contains, against what compose asks of it (`make stack-check`).

Reads observability/images.yml (one entry per image pin in .env: its base, whether it has a
shell, wget and curl, the programs we may call in it, the health check to use, and the upstream
sources at the pinned tag that prove it) and the models the real Compose CLI resolves
(docker-compose.yml; with the Alloy override; with --profile load). Fails when:
  - an image of .env has no entry, or an entry's image differs from the pin;
  - a health check or entrypoint calls a program its image lacks (CMD-SHELL needs a shell);
  - a service's health check differs from the one its image's entry proves;
  - our image's command is not a binary the Dockerfile installs;
  - a `depends_on: service_healthy` target has no health check, or depends_on has a cycle.
It prints the start order the depends_on graph implies.
"""
import json
import os
import re
import shlex
import sys

import yaml

from stacklib import compose_config, read_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TABLE = os.path.join(ROOT, "observability", "images.yml")
BASES = {"distroless", "alpine", "busybox", "debian", "ubuntu", "scratch"}
MODELS = {
    "docker-compose.yml": ["-f", "docker-compose.yml"],
    "+ docker-compose.alloy.yml": ["-f", "docker-compose.yml", "-f", "docker-compose.alloy.yml"],
    "--profile load": ["-f", "docker-compose.yml", "--profile", "load"],
}
# Shell words that are not programs (POSIX special and regular built-ins used in health checks).
BUILTINS = {"exit", "test", "[", "true", "false", "echo", "printf", "command", "exec", ":"}
failed = 0


def check(name, ok, detail=""):
    global failed
    failed += not ok
    print(f"ok - {name}" if ok else f"not ok - {name}: {detail}", flush=True)


def compose(args):
    model, err = compose_config(*args)
    if model is None:
        raise SystemExit(f"not ok - docker compose {' '.join(args)} config: {err[-400:]}")
    return model


def has(entry, program):
    """Whether the image provides `program` (an absolute path or a name on PATH)."""
    name = os.path.basename(program)
    if name in ("wget", "curl"):
        return bool(entry.get(name))
    if name in ("sh", "bash", "ash"):
        return bool(entry.get("shell")) and (program in entry.get("programs", []) or name == "sh")
    return program in (entry.get("programs") or [])


def programs_called(test):
    """The programs a compose `test` / `entrypoint` list runs, and whether it needs a shell."""
    kind, rest = test[0], test[1:]
    if kind == "CMD":
        return [rest[0]], False
    if kind == "CMD-SHELL":
        words = []
        for part in re.split(r"\|\||&&|;|\|", " ".join(rest)):
            tokens = shlex.split(part)
            while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
                tokens.pop(0)  # VAR=value prefixes
            if tokens and tokens[0] not in BUILTINS:
                words.append(tokens[0])
        return words, True
    return [], False


def dockerfile_binaries():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    runtime = text[text.rindex("AS runtime"):]
    copied = set()
    for m in re.finditer(r"^COPY\s+--from=\S+\s+(.+?)\s+(/\S+/)\s*$", runtime, re.M):
        copied |= {m.group(2) + os.path.basename(src) for src in m.group(1).split()}
    return copied, "ENTRYPOINT" in runtime


def table_checks(env, table):
    pins = {k: v for k, v in env.items() if k.endswith("_IMAGE")}
    check("images.yml: an entry for every image pinned in .env", set(pins) <= set(table), f"missing: {sorted(set(pins) - set(table))}")
    check("images.yml: no entry for an image .env does not pin", set(table) <= set(pins), f"extra: {sorted(set(table) - set(pins))}")
    for var, e in sorted(table.items()):
        problems = []
        if e.get("image") != pins.get(var):
            problems.append(f"image {e.get('image')!r} but .env pins {pins.get(var)!r}")
        if e.get("base") not in BASES:
            problems.append(f"base {e.get('base')!r} not one of {sorted(BASES)}")
        for key in ("shell", "wget", "curl"):
            if not isinstance(e.get(key), bool):
                problems.append(f"`{key}` must be true or false")
        sources = e.get("sources") or []
        if not sources or not all(s.get("url") and s.get("shows") for s in sources):
            problems.append("needs sources, each with a url and what it shows")
        if e.get("healthcheck") is None and not e.get("why"):
            problems.append("no health check and no `why`")
        check(f"images.yml {var} ({e.get('image')}): base {e.get('base')}, shell={e.get('shell')}, wget={e.get('wget')}, "
              f"curl={e.get('curl')}, {len(sources)} source(s)", not problems, "; ".join(problems))
    binaries, entrypoint = dockerfile_binaries()
    own = table.get("JOBSTACK_IMAGE", {})
    check("images.yml JOBSTACK_IMAGE: its programs are exactly the binaries the Dockerfile installs",
          set(own.get("programs") or []) == binaries, f"table {sorted(own.get('programs') or [])}, Dockerfile {sorted(binaries)}")
    return entrypoint


def service_checks(label, model, table, our_entrypoint, seen):
    """Each service once, in the first model that has it in this shape."""
    by_image = {e["image"]: (var, e) for var, e in table.items()}
    for name, svc in sorted(model["services"].items()):
        key = json.dumps([name, svc.get("image"), svc.get("healthcheck"), svc.get("entrypoint"), svc.get("command")], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        image = svc.get("image") or ""
        var, entry = by_image.get(image, (None, None))
        if entry is None:
            check(f"[{label}] {name}: its image {image!r} has an entry in images.yml", False, "add one, with sources")
            continue
        hc = svc.get("healthcheck") or {}
        test = None if hc.get("disable") or hc.get("test") in (None, ["NONE"]) else hc["test"]
        if test:
            called, shell = programs_called(test)
            lacks = [p for p in called if not has(entry, p)]
            if shell and not entry.get("shell"):
                lacks.insert(0, "a shell (CMD-SHELL)")
            check(f"[{label}] {name}: health check {test} uses only what {image} contains", not lacks,
                  f"{image} has no {', '.join(lacks)} (observability/images.yml, {entry['sources'][0]['url']})")
        proven = entry.get("healthcheck")
        if isinstance(proven, dict):  # one image, several services
            proven = proven.get(name, f"no entry for service {name}")
        check(f"[{label}] {name}: health check is the one images.yml proves for {var}", test == proven,
              f"compose {test}, images.yml {proven}")
        entrypoint = svc.get("entrypoint")
        if entrypoint:
            lacks = [p for p in programs_called(["CMD", *entrypoint])[0] if not has(entry, p)]
            check(f"[{label}] {name}: entrypoint {entrypoint} exists in {image}", not lacks, f"{image} has no {lacks}")
        if "build" in svc and not our_entrypoint:
            command = svc.get("command") or []
            check(f"[{label}] {name}: command {command[:1]} is a binary of our image (no ENTRYPOINT, no shell)",
                  bool(command) and has(entry, command[0]), f"programs: {entry.get('programs')}")


def graph_checks(label, model):
    services = model["services"]
    deps = {n: dict(s.get("depends_on") or {}) for n, s in services.items()}
    bad = []
    for n, ds in deps.items():
        for d, how in ds.items():
            hc = (services.get(d) or {}).get("healthcheck") or {}
            if how.get("condition") == "service_healthy" and (not hc.get("test") or hc.get("disable") or hc["test"] == ["NONE"]):
                bad.append(f"{n} waits for {d} to be healthy, but {d} has no health check")
    check(f"[{label}] depends_on: every service_healthy target has a health check", not bad, "; ".join(bad))
    # Kahn's algorithm: levels of services whose dependencies have all started.
    left, levels = {n: set(ds) & set(services) for n, ds in deps.items()}, []
    while left:
        level = sorted(n for n, ds in left.items() if not ds)
        if not level:
            break
        levels.append(level)
        left = {n: ds - set(level) for n, ds in left.items() if n not in level}
    check(f"[{label}] depends_on: no cycle", not left, f"cycle among {sorted(left)}")
    print(f"# [{label}] start order: " + " -> ".join("{" + ", ".join(lv) + "}" for lv in levels), flush=True)


def main():
    env = read_env()
    table = (yaml.safe_load(open(TABLE)) or {}).get("images") or {}
    our_entrypoint, seen = table_checks(env, table), set()
    for label, args in MODELS.items():
        model = compose(args)
        service_checks(label, model, table, our_entrypoint, seen)
        graph_checks(label, model)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Turns a copy of the template into a project of its own: `python3 tools/fork.py NAME [--lean]`.

What `cargo generate` runs through tools/fork.rhai, in the copy's root. In this order:
1. `--lean` (the template's `include_bench = false`): the benchmark and the load generator go
   (bench/, loadgen/, BENCHMARKS.md) with every line that mentions them (LEAN), and cargo prunes
   Cargo.lock (`cargo update --workspace` keeps every other locked version: the Dockerfile builds
   with --locked);
2. the template's own machinery goes from the docs and menus (TEMPLATE): a fork is not a template,
   and `make fork-check` cannot run in one;
3. tools/rename.py NAME renames the project, then the machinery's files go (DROP_LAST).
Edits are written against the template's text and each must match exactly as often as it says:
a change to the template that leaves an edit behind fails here, loudly (`make fork-check`),
instead of leaving a stale line in the fork.
"""
import os
import shutil
import subprocess
import sys

# (op, path, ...): ("drop", path) removes a file or folder; ("edit", path, old, new[, count])
# replaces text that occurs exactly count (1) times; ("cut", path, first, stop) removes the line
# starting with `first` and, when stop is given, every line after it up to the one starting with
# `stop`, and then a blank line it leaves doubled or at the end of the file.
LEAN = [
    ("drop", "bench"),
    ("drop", "loadgen"),
    ("drop", "BENCHMARKS.md"),
    ("drop", "bench-e2e-latency.svg"),
    ("drop", "bench-e2e-soak.svg"),
    ("drop", "bench-long-jobs-rss.svg"),
    # The story drives load with loadgen.
    ("drop", "tools/demo-story.sh"),
    ("cut", "Makefile", ".PHONY: demo-story", ".PHONY: load"),
    ("cut", "README.md", "### The demo story", "### Scaling workers"),
    ("cut", "README.md", "- **The demo story**: ", "- **What no program here can load**"),
    ("drop", "tests/stack/compose_standin.sh"),
    ("cut", "tests/stack/check_live.py", "class GrafanaAnnotations(", "class OtlpSink("),
    ("cut", "tests/stack/check_live.py", "    demo_story(API, ", None),
    ("cut", "tests/stack/check_live.py", "def demo_story(", "def job_status("),
    ("edit", ".env", "(the demo's fault switches, used by\n# `make demo-story`)", "(the demo's fault switches)"),
    ("edit", "Cargo.toml", '"loadgen", ', ""),
    ("edit", "Cargo.toml", ', "bench"]', "]"),
    ("edit", "Cargo.toml", "# load generator\n", "# HTTP client (tests)\n"),
    ("cut", "Cargo.toml", "hdrhistogram = ", None),
    ("cut", "Cargo.toml", "# the bench's charts", None),
    ("cut", "Cargo.toml", "plotters = ", None),
    ("cut", "Cargo.toml", "clap = ", None),
    ("edit", "Cargo.toml", "(bench's otlp-sink, the api's telemetry tests)", "(the api's telemetry tests)"),
    ("cut", "Makefile", ".PHONY: load", ".PHONY: k8s-check"),
    ("edit", "Dockerfile", "One image, three binaries: /usr/local/bin/{api,worker,loadgen}",
     "One image, two binaries: /usr/local/bin/{api,worker}"),
    ("edit", "Dockerfile", "--bin api --bin worker --bin loadgen", "--bin api --bin worker"),
    ("edit", "Dockerfile", "jobstack api, worker and loadgen:", "jobstack api and worker:"),
    ("edit", "Dockerfile", " /src/target/release/loadgen /usr/local/bin/", " /usr/local/bin/"),
    ("edit", "docker-compose.yml", "(+256 MiB per extra worker,\n# +128 MiB for loadgen). They",
     "(+256 MiB per extra worker).\n# They"),
    ("cut", "docker-compose.yml", "  # loadgen: ", "  # rabbitmq: "),
    ("edit", ".env", "bounded under loadgen;", "bounded under load;"),
    ("edit", ".env", "(http://127.0.0.1:8080/ui) and loadgen log in with it", "(http://127.0.0.1:8080/ui) logs in with it"),
    ("cut", ".dockerignore", ".bench", None),
    ("cut", ".gitignore", "/.bench/", None),
    ("edit", "observability/images.yml", "adds our three binaries", "adds our two binaries"),
    ("edit", "observability/images.yml", ", /usr/local/bin/loadgen]", "]"),
    ("edit", "observability/images.yml", "# one image, three services", "# one image, two services"),
    ("cut", "observability/images.yml", "      loadgen: null", None),
    ("edit", "observability/images.yml", ".../worker .../loadgen /usr/local/bin/", ".../worker /usr/local/bin/"),
    ("edit", "observability/promtail/config.yml", "api|worker|loadgen", "api|worker"),
    ("edit", "observability/alloy/config.alloy", "api|worker|loadgen", "api|worker"),
    ("edit", "tests/stack/run.sh", "--bin api/worker/loadgen)", "--bin api/worker)"),
    ("edit", "tests/stack/docker_stages.sh", "--bin worker --bin loadgen", "--bin worker", 2),
    ("edit", "tests/stack/docker_stages.sh", "of api, worker, loadgen", "of api and worker"),
    # The compose `load` profile held only loadgen: the checks stop resolving it.
    ("cut", "tests/stack/check_static.py", '    lg = base["services"]["loadgen"]', '    g = services["grafana"]'),
    ("cut", "tests/stack/check_static.py", '    load, err = config(', None),
    ("cut", "tests/stack/check_static.py", '    check(f"docker compose {version} config: --profile load', None),
    ("edit", "tests/stack/check_static.py", "if not (base and alloy and load):", "if not (base and alloy):"),
    ("edit", "tests/stack/check_static.py", " (loadgen only with --profile load)\",\n"
     '          set(base["services"]) == expect and set(load["services"]) == expect | {"loadgen"},\n'
     "          f\"base={sorted(base['services'])} load={sorted(load['services'])}\")",
     '",\n          set(base["services"]) == expect, str(sorted(base["services"])))'),
    ("edit", "tests/stack/check_static.py", "for model in (base, alloy, load):", "for model in (base, alloy):"),
    ("edit", "tests/stack/check_images.py", "; with the Alloy override; with --profile load)", "; with the Alloy override)"),
    ("cut", "tests/stack/check_images.py", '    "--profile load": ', None),
    ("cut", "README.md", "## Load and benchmarks", "## Extending the template"),
    ("edit", "README.md", "`fmt`, `load`, `bench`, `up`", "`fmt`, `up`"),
    ("edit", "README.md", "Send some work, or start the load generator:", "Send some work:"),
    ("cut", "README.md", "docker compose --profile load up -d loadgen ", None),
    ("edit", "README.md", "(+256 MiB per extra worker, +128 MiB for\nloadgen). They are ceilings,",
     "(+256 MiB per extra worker). They are\nceilings,"),
    ("edit", "README.md", "bounded under `loadgen`;", "bounded under load;"),
    ("edit", "README.md", "the console and `loadgen` use it", "the console uses it"),
    ("edit", "README.md", "(api, worker and loadgen)", "(api and worker)"),
    ("edit", "README.md", "(plain, with the Alloy override, with `--profile load`)", "(plain and with the Alloy override)"),
    ("edit", "README.md", "cargo run --release -p loadgen -- --rate 20 --duration 5m --mix sleep=100 --sleep-ms 2000..5000\n",
     "for i in $(seq 6000); do curl -s -o /dev/null localhost:8080/jobs -H \"authorization: Bearer $API_KEY\" \\\n"
     "  -H 'content-type: application/json' \\\n"
     "  -d '{\"kind\":\"sleep\",\"payload\":{\"duration_ms\":4000,\"steps\":4}}'; done\n"),
    ("edit", "README.md", "document and loadgen's `--mix resize=…` (posting the kind's example) include it",
     "document includes it"),
    ("edit", "README.md", " `make bench` measures a storm of 500 jobs failing together\n   next to a steady stream (BENCHMARKS.md).", ""),
    ("cut", "README.md", "- Cost when no limit is hit: `make bench`", None),
    ("cut", "README.md", "| `loadgen/` |", None),
    ("cut", "README.md", "| `bench/` |", None),
]

TEMPLATE = [
    ("cut", "Makefile", ".PHONY: fork-check", ".PHONY: contract"),
    ("cut", ".ci/run", 'log "make fork-check', None),
    ("cut", ".ci/run", "make fork-check", None),
    ("cut", "README.md", "**Fork it**", "**A job kind**"),
    ("edit", "README.md", "; the fork path (`fork.rhai`, `fork.py`, `rename.py`)", ""),
]

DROP_LAST = ["cargo-generate.toml", "tools/fork.rhai", "tools/fork.py", "tools/rename.py", "tests/fork.sh"]


def apply(op):
    kind, path = op[0], op[1]
    if kind == "drop":
        if not os.path.exists(path):
            return f"{path}: not there"
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return None
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if kind == "edit":
        old, new, count = op[2], op[3], (op[4] if len(op) > 4 else 1)
        if text.count(old) != count:
            return f"{path}: {old!r} occurs {text.count(old)} times, expected {count}"
        text = text.replace(old, new)
    else:
        first, stop = op[2], op[3]
        lines = text.splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.startswith(first)]
        if len(starts) != 1:
            return f"{path}: {len(starts)} lines start with {first!r}, expected 1"
        end = starts[0] + 1
        if stop is not None:
            ends = [i for i in range(end, len(lines)) if lines[i].startswith(stop)]
            if not ends:
                return f"{path}: no line starting with {stop!r} after {first!r}"
            end = ends[0]
        head, tail = lines[: starts[0]], lines[end:]
        if head and not head[-1].strip() and (not tail or not tail[0].strip()):
            head.pop()
        text = "".join(head + tail)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return None


def main():
    args = sys.argv[1:]
    lean = "--lean" in args
    names = [a for a in args if a != "--lean"]
    if len(names) != 1:
        sys.exit("usage: fork.py NAME [--lean]   (NAME in snake case, e.g. acme_jobs; run in the copy's root)")
    ops = (LEAN if lean else []) + TEMPLATE
    misses = [m for m in map(apply, ops) if m]
    if misses:
        print("fork: the template changed under these edits (tools/fork.py):", *misses, sep="\n  ", file=sys.stderr)
        return 1
    if lean:
        subprocess.run(["cargo", "update", "--workspace", "--quiet"], check=True)
    subprocess.run([sys.executable, "tools/rename.py", names[0]], check=True)
    for path in DROP_LAST:
        apply(("drop", path))
    print(f"fork: {len(ops)} edits ({'lean: no bench, no loadgen' if lean else 'full'}), renamed, template files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The OpenAPI checks, each by a third-party tool, against a real api and worker:

  1. api/openapi.json passes openapi-spec-validator as OpenAPI 3.1 (`make contract` writes it; a
     system test fails when it is not the served document);
  2. openapi-python-client generates a client from the served /openapi.json without a warning, and
     test_client.py drives every operation through it;
  3. schemathesis fuzzes every operation with every check, schemathesis.toml and fuzz_hooks.py
     saying only what the document cannot; it must generate at least --min-cases cases, test every
     operation and warn of nothing (a pattern it cannot use, an unresolvable reference...).

`check.py` runs all three (`make openapi-check`, part of `make test`); `check.py fuzz` only the
fuzzer, longer (`make fuzz`). Ends with one line: `N passed, N failed`."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from stack import Stack  # noqa: E402

BIN = os.path.dirname(sys.executable)
results = []


def step(name, seconds, cmd, **kw):
    """Runs CMD, bounded; passed when it exits 0. Its output is shown as it comes."""
    print(f"# {name}", flush=True)
    start = time.monotonic()
    try:
        ok = subprocess.run(cmd, timeout=seconds, **kw).returncode == 0
    except subprocess.TimeoutExpired:
        print(f"# timed out after {seconds}s")
        ok = False
    record(ok, f"{name} ({time.monotonic() - start:.0f}s)")
    return ok


def record(ok, name):
    results.append(ok)
    print(f"{'ok' if ok else 'not ok'} - {name}", flush=True)


def validate():
    step("openapi-spec-validator: api/openapi.json is valid OpenAPI 3.1", 60,
         [os.path.join(BIN, "openapi-spec-validator"), "--schema", "3.1", "--validation-errors", "all",
          os.path.join(ROOT, "api", "openapi.json")])


def client(stack, work):
    out = os.path.join(work, "jobstack_client")
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}  # its ruff
    if not step("openapi-python-client generates a client from /openapi.json, warning of nothing", 120,
                [os.path.join(BIN, "openapi-python-client"), "generate", "--url", stack.url + "/openapi.json",
                 "--meta", "none", "--output-path", out, "--fail-on-warning"], env=env, cwd=work):
        return
    step("the generated client drives every operation (test_client.py)", 300,
         [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", HERE,
          os.path.join(HERE, "test_client.py")],
         env={**env, "OPENAPI_URL": stack.url, "OPENAPI_CLIENT": work, "OPENAPI_KEY": stack.key})


def fuzz(stack, work, cases, min_cases, seconds):
    report = os.path.join(work, "schemathesis.json")
    cmd = [os.path.join(BIN, "schemathesis"), "--config-file", os.path.join(HERE, "schemathesis.toml"), "run",
           stack.url + "/openapi.json", "--checks", "all", "--max-examples", str(cases),
           "--report", "json", "--report-json-path", report, "--no-color",
           "--header", f"Authorization: Bearer {stack.key}"]
    if os.environ.get("FUZZ_SEED"):
        cmd += ["--seed", os.environ["FUZZ_SEED"]]
    # Run in the scratch directory: schemathesis and Hypothesis keep their caches in the cwd.
    ran = step(f"schemathesis, every check, {cases} examples per operation and phase", seconds, cmd, cwd=work,
               env={**os.environ, "PYTHONPATH": HERE})
    try:
        with open(report) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        record(False, f"schemathesis wrote its report ({e})")
        return
    generated = run["test_cases"]["generated"]
    ops = run["operations"]
    warnings = {k: v for k, v in run["warnings"].items() if v}
    record(generated >= min_cases, f"schemathesis generated {generated} cases (at least {min_cases})")
    record(ops["tested"] == ops["total"] and not ops["errored"],
           f"schemathesis tested {ops['tested']} of {ops['total']} operations")
    record(not warnings, f"schemathesis warned of nothing {json.dumps(warnings) if warnings else ''}")
    errors = stack.errors()
    record(not errors, "the api logged no error while fuzzed" + "".join(f"\n#   {e.strip()}" for e in errors[:5]))
    if not ran:
        print(f"# replay a failure: FUZZ_SEED={run['seed']} make fuzz")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["all", "fuzz"], default="all")
    ap.add_argument("--bin-dir", required=True, help="where the api and worker binaries are")
    ap.add_argument("--cases", type=int, default=300, help="schemathesis --max-examples")
    ap.add_argument("--min-cases", type=int, default=2000)
    # Here the run takes about 90 s; a fresh CI machine took over 300 s for the same cases.
    ap.add_argument("--fuzz-seconds", type=int, default=900)
    args = ap.parse_args()
    if args.what == "all":
        validate()
    with tempfile.TemporaryDirectory(prefix="jobstack-openapi-") as work:
        try:
            with Stack(args.bin_dir) as stack:
                if args.what == "all":
                    client(stack, work)
                fuzz(stack, work, args.cases, args.min_cases, args.fuzz_seconds)
                if not all(results):
                    for name in ("api", "worker"):
                        print(f"# {name} log, last lines:\n{stack.tail(name)}")
        except Exception as e:  # noqa: BLE001 - a broken stack is one failed check, said in one line
            record(False, f"a real api and worker on loopback ({e})")
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

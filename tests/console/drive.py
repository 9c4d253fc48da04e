"""Starts an api and a worker (tests/openapi/stack.py: their own database and AMQP prefix on the
tests' PostgreSQL and RabbitMQ, removed afterwards), makes an operator's and a viewer's API key
and three failed jobs through the api, then runs console.mjs against it with those keys."""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "openapi"))
from stack import Stack  # noqa: E402


def call(stack, method, path, body=None):
    req = urllib.request.Request(stack.url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {stack.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    args = ap.parse_args()
    with Stack(args.bin_dir) as stack:
        operator = call(stack, "POST", "/keys", {"name": "night-shift", "role": "operator"})["secret"]
        viewer = call(stack, "POST", "/keys", {"name": "auditor", "role": "viewer"})["secret"]
        # Failed for good at once (a permanent failure is not retried), for the bulk re-drive.
        failed = [call(stack, "POST", "/jobs", {"kind": "fail", "payload": {"transient": False}})["id"]
                  for _ in range(3)]
        deadline = time.monotonic() + 60
        while any(call(stack, "GET", f"/jobs/{i}")["status"] != "failed" for i in failed):
            if time.monotonic() > deadline:
                sys.exit("the failing jobs did not fail within 60 s")
            time.sleep(0.3)
        env = {**os.environ, "CONSOLE_URL": stack.url, "OPERATOR_KEY": operator, "VIEWER_KEY": viewer}
        ran = subprocess.run(["node", os.path.join(HERE, "console.mjs")], env=env)
        if ran.returncode != 0:
            print(f"# api log, last lines:\n{stack.tail('api')}")
        sys.exit(ran.returncode)


if __name__ == "__main__":
    main()

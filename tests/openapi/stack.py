"""A real api and worker on loopback for the OpenAPI checks, with a database and an AMQP prefix of
their own on the tests' servers (TEST_DATABASE_URL, TEST_AMQP_URL), all removed again however
the run ends: a failed check, an exception, Ctrl-C or a SIGTERM from `timeout`."""
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import pika
import psycopg

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
# The names the services derive from AMQP_PREFIX (jobs-contract/src/topology.rs). `remove_broker_objects`
# fails when one of them was never declared, so a rename there cannot leave queues behind unseen.
EXCHANGES = ("jobs", "dlx", "events", "control")
QUEUES = ("jobs", "jobs.dead", "api.events", "control")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_database(url, name):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _terminate(signum, frame):
    # Turn `timeout`'s SIGTERM into an exception, so every `finally` below still runs.
    raise SystemExit(128 + signum)


class Stack:
    """`api` (and `worker`) processes, their database and broker objects."""

    def __init__(self, bin_dir, worker=True):
        run = uuid.uuid4().hex[:10]
        self.database = f"openapi_{run}"
        self.prefix = f"openapi-{run}"
        self.logs = tempfile.mkdtemp(prefix="jobstack-openapi-")
        api_port = _free_port()
        self.url = f"http://127.0.0.1:{api_port}"
        # The api's demo key (an admin's): every check runs with it.
        self.key = "jsk_" + secrets.token_hex(32)
        base = {
            **os.environ,
            "DATABASE_URL": _with_database(DATABASE_URL, self.database),
            "AMQP_URL": AMQP_URL,
            "AMQP_PREFIX": self.prefix,
            "RUST_LOG": "info",
            "LOG_FORMAT": "json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "SHUTDOWN_GRACE_SECS": "2",
        }
        self.commands = [("api", [os.path.join(bin_dir, "api")], {
            **base, "API_LISTEN": f"127.0.0.1:{api_port}", "API_DEMO_KEY": self.key,
            # The fuzzer sends thousands of requests as one client: quotas are tested elsewhere.
            "CLIENT_SUBMIT_RATE": "0", "CLIENT_MAX_IN_FLIGHT": "0",
        })]
        if worker:
            # One job at a time: the fuzzer submits thousands, and the machine runs the api too.
            self.commands.append(("worker", [os.path.join(bin_dir, "worker")], {
                **base, "WORKER_LISTEN": f"127.0.0.1:{_free_port()}", "WORKER_CONCURRENCY": "1",
                "MAX_ATTEMPTS": "2", "RETRY_BASE_MS": "50",
            }))
        self.procs = []

    def __enter__(self):
        signal.signal(signal.SIGTERM, _terminate)
        try:
            for name, cmd, env in self.commands:
                log = open(os.path.join(self.logs, f"{name}.log"), "w")
                self.procs.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                          start_new_session=True)))
            self._wait_ready()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _wait_ready(self, seconds=60):
        deadline = time.monotonic() + seconds
        last = None
        while time.monotonic() < deadline:
            for name, p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if json.load(r).get("rabbitmq") == "up":
                        return
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(f"the api was not ready in {seconds}s ({last}):\n{self.tail('api')}")

    def tail(self, name, lines=30):
        with open(os.path.join(self.logs, f"{name}.log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def errors(self):
        """The api's error-level log lines: a 500 the fuzzer saw is logged here with its cause."""
        with open(os.path.join(self.logs, "api.log"), errors="replace") as f:
            return [line for line in f if '"level":"error"' in line]

    def __exit__(self, *exc):
        for _, p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        problems = []
        try:
            with psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=10) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except psycopg.Error as e:
            problems.append(f"database {self.database} not dropped: {e}")
        problems += remove_broker_objects(self.prefix)
        shutil.rmtree(self.logs, ignore_errors=True)
        if exc[0] is None and problems:
            raise RuntimeError("; ".join(problems))
        for p in problems:
            print(f"# {p}", file=sys.stderr)
        return False


def remove_broker_objects(prefix):
    """Deletes the prefix's queues and exchanges; returns what went wrong, if anything."""
    problems = []
    try:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as e:
        return [f"broker objects of {prefix} not removed: {e!r}"]
    with contextlib.closing(conn):
        for kind, names in (("queue", QUEUES), ("exchange", EXCHANGES)):
            for name in names:
                full = f"{prefix}.{name}"
                # A failed passive declare closes the channel: one channel per name.
                ch = conn.channel()
                try:
                    if kind == "queue":
                        ch.queue_declare(full, passive=True)
                        ch.queue_delete(full)
                    else:
                        ch.exchange_declare(full, passive=True)
                        ch.exchange_delete(full)
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker as e:
                    problems.append(f"{kind} {full} was never declared ({e.reply_text}): is the list in stack.py stale?")
    return problems

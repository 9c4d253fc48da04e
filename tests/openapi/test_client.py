"""Every operation of the served document, driven through the client openapi-python-client
generated from it (OPENAPI_CLIENT), against a real api and worker (OPENAPI_URL).

The client raises on a status the document does not list, and its models raise on a body they
cannot read (a missing field, a status outside its enum); `call` also checks that each answer
parsed into the model the test expects. An operation the generator dropped fails at import; one
the api gained without a test here fails `test_every_operation_was_driven`."""
import datetime
import os
import re
import sys
import time
import typing
import uuid

import httpx
import pytest

sys.path.insert(0, os.environ["OPENAPI_CLIENT"])
from jobstack_client import AuthenticatedClient, Client  # noqa: E402
from jobstack_client.api.audit import list_audit  # noqa: E402
from jobstack_client.api.keys import create_key, list_keys, revoke_key  # noqa: E402
from jobstack_client.api.health import healthz, metrics, openapi, readyz  # noqa: E402
from jobstack_client.api.jobs import (  # noqa: E402
    cancel_job, create_job, get_job, list_jobs, redrive_job, redrive_jobs,
)
from jobstack_client.api.kinds import list_kinds, pause_kind, resume_kind  # noqa: E402
from jobstack_client.api.schedules import (  # noqa: E402
    change_schedule, create_schedule, delete_schedule, get_schedule, list_schedules, pause_schedule,
    resume_schedule,
)
from jobstack_client.api.workflows import (  # noqa: E402
    cancel_workflow, create_workflow, get_workflow, list_workflows,
)
from jobstack_client.models import (  # noqa: E402
    Alive, AuditEntry, Held, Job, JobPage, Key, KeyRequest, Kind, KindStatus, Missed, NewKeyAnswer, Problem, Ready,
    Redrivable, RedriveMany, Redriven, Role, Schedule, SchedulePatch, Status, Workflow, WorkflowPage, WorkflowRequest,
    WorkflowStatus,
)

URL = os.environ["OPENAPI_URL"]
KEY = os.environ["OPENAPI_KEY"]  # the api's demo key, an admin's
FINAL = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
driven = set()  # the operations' modules this run called
earlier = {}  # jobs the first test cancelled, which the second re-drives


@pytest.fixture(scope="module")
def client():
    with AuthenticatedClient(base_url=URL, token=KEY, raise_on_unexpected_status=True,
                             timeout=httpx.Timeout(15)) as c:
        yield c


def call(operation, expect_status, expect_type, client, **kwargs):
    """`operation.sync_detailed`, its status and parsed type checked; the operation recorded."""
    driven.add(operation.__name__.rsplit(".", 1)[1])
    r = operation.sync_detailed(client=client, **kwargs)
    assert r.status_code == expect_status, f"{operation.__name__}: {r.status_code} {r.content[:300]!r}"
    assert isinstance(r.parsed, expect_type), f"{operation.__name__}: parsed {type(r.parsed)}"
    for job in [r.parsed] if isinstance(r.parsed, Job) else [j for j in getattr(r.parsed, "items", []) if isinstance(j, Job)]:
        assert isinstance(job.status, Status), f"{operation.__name__}: status {job.status!r} is not the enum"
    if operation.__name__.rsplit(".", 1)[1] != "metrics":
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", r.headers["traceparent"])
    return r


def kinds():
    """Each job kind the document names, with its request model and its example request."""
    doc = httpx.get(URL + "/openapi.json").json()["components"]["schemas"]
    models = typing.get_args(typing.get_type_hints(create_job.sync_detailed)["body"])
    out = {}
    for ref in doc["CreateJob"]["oneOf"]:
        schema = doc[ref["$ref"].rsplit("/", 1)[1]]
        kind, example = schema["properties"]["kind"]["const"], schema["examples"][0]
        out[kind] = (next(m for m in models if reads(m, example)), example)
    assert set(out) == {k.value for k in Kind}, "the Kind enum is the contract's kinds"
    return out


def reads(model, body):
    """Whether `model` is the request model of body's kind (each checks its `kind` constant)."""
    try:
        model.from_dict(body)
        return True
    except ValueError:
        return False


def submit(client, model, body, **kwargs):
    return call(create_job, 202, Job, client, body=model.from_dict(body), **kwargs)


def wait(client, job_id, until, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        job = call(get_job, 200, Job, client, id=job_id).parsed
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {seconds}s"
        time.sleep(0.1)


def listed(client, **filters):
    """Every job the filters select, paged through with the cursor, one job a page."""
    ids, cursor, pages = [], None, 0
    while True:
        page = call(list_jobs, 200, JobPage, client, limit=1, **filters,
                    **({"cursor": cursor} if cursor else {})).parsed
        ids += [j.id for j in page.items]
        for j in page.items:
            assert "status" not in filters or j.status == filters["status"]
            assert "kind" not in filters or j.kind == filters["kind"].value
        pages += 1
        if not page.next_cursor:
            return ids
        cursor = page.next_cursor
        assert pages < 500, "the cursor does not end"


def test_health(client):
    assert call(healthz, 200, Alive, client).parsed.status.value == "ok"
    ready = call(readyz, 200, Ready, client).parsed
    assert (ready.status.value, ready.postgres.value, ready.rabbitmq.value) == ("ready", "up", "up")
    assert "http_server_request_duration_seconds" in call(metrics, 200, str, client).parsed
    assert call(openapi, 200, object, client).parsed.additional_properties["openapi"].startswith("3.1")


def test_every_kind_runs_and_every_filter_selects(client):
    examples = kinds()
    created = {}
    # A job holding the only worker slot (concurrency 1) while the next one waits in the queue.
    sleep_model, _ = examples["sleep"]
    holder = submit(client, sleep_model, {"kind": "sleep", "payload": {"duration_ms": 20_000, "steps": 100}})
    assert holder.headers["location"] == f"/jobs/{holder.parsed.id}"
    wait(client, holder.parsed.id, lambda j: j.status == Status.RUNNING)
    waiting = submit(client, *examples["hash"])
    # Delayed: scheduled until its run_at, an hour from now.
    later = submit(client, sleep_model, {"kind": "sleep", "payload": {"duration_ms": 1, "steps": 1},
                                         "delay_ms": 3_600_000}).parsed
    assert later.status == Status.SCHEDULED
    assert later.run_at - later.created_at >= datetime.timedelta(minutes=59)
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    at_job = submit(client, sleep_model, {"kind": "sleep", "payload": {"duration_ms": 1, "steps": 1},
                                          "run_at": at.isoformat()}).parsed
    assert at_job.status == Status.SCHEDULED and abs(at_job.run_at - at) < datetime.timedelta(seconds=1)
    for status, job in ((Status.RUNNING, holder.parsed), (Status.QUEUED, waiting.parsed),
                        (Status.SCHEDULED, later)):
        assert job.id in listed(client, status=status), f"{job.id} listed as {status}"

    # Cancel: a scheduled job at once, a running one at its next step.
    assert call(cancel_job, 202, Job, client, id=later.id).parsed.status == Status.CANCELLED
    call(cancel_job, 202, Job, client, id=holder.parsed.id)
    assert wait(client, holder.parsed.id, lambda j: j.status in FINAL).status == Status.CANCELLED
    assert call(cancel_job, 409, Problem, client, id=later.id).parsed.status == 409
    earlier.update(holder=holder.parsed.id, later=later.id)

    # Every kind's example, one with an Idempotency-Key sent twice.
    key = f"openapi-{uuid.uuid4()}"
    for kind, (model, example) in examples.items():
        created[kind] = submit(client, model, example).parsed.id
    first = submit(client, *examples["hash"], idempotency_key=key)
    again = submit(client, *examples["hash"], idempotency_key=key)
    assert again.parsed.id == first.parsed.id and again.headers["idempotent-replayed"] == "true"
    for kind, job_id in created.items():
        job = wait(client, job_id, lambda j: j.status in FINAL)
        assert job.status == (Status.FAILED if kind == "fail" else Status.SUCCEEDED), job
    assert waiting.parsed.id in listed(client, status=Status.SUCCEEDED)
    assert created["fail"] in listed(client, status=Status.FAILED)
    assert later.id in listed(client, status=Status.CANCELLED)
    for kind in Kind:
        ids = listed(client, kind=kind)
        assert created[kind.value] in ids and len(ids) == len(set(ids))
    assert listed(client, kind=Kind("sleep"), status=Status.SCHEDULED) == [at_job.id]

    # What the document says of bad input, read through the same client.
    assert call(get_job, 404, Problem, client, id=uuid.uuid4()).parsed.status == 404
    assert call(list_jobs, 400, Problem, client, cursor="0_" + "g" * 32).parsed.status == 400


def test_redrive_one_and_many(client):
    fail_model, _ = kinds()["fail"]
    permanent = {"kind": "fail", "payload": {"transient": False}}
    ids = [submit(client, fail_model, permanent).parsed.id for _ in range(3)]
    for job_id in ids:
        assert wait(client, job_id, lambda j: j.status in FINAL).status == Status.FAILED
    one = call(redrive_job, 202, Job, client, id=ids[0]).parsed
    assert one.generation == 1 and one.attempts == 0 and one.status in (Status.QUEUED, Status.RUNNING)
    again = wait(client, ids[0], lambda j: j.status in FINAL)
    assert again.status == Status.FAILED and again.history[0].status == Status.FAILED
    many = call(redrive_jobs, 200, Redriven, client,
                body=RedriveMany(status=Redrivable.FAILED, kind=Kind("fail"), limit=1000)).parsed
    assert set(ids) <= set(many.ids) and many.requeued == len(many.ids)
    for job_id in ids:
        assert wait(client, job_id, lambda j: j.status in FINAL and j.generation >= 1).status == Status.FAILED
    # The two the test before cancelled: the 20 s sleep is cancelled again, the other one runs.
    cancelled = call(redrive_jobs, 200, Redriven, client, body=RedriveMany(status=Redrivable.CANCELLED)).parsed
    assert cancelled.requeued == 2 and set(cancelled.ids) == set(earlier.values())
    call(cancel_job, 202, Job, client, id=earlier["holder"])
    assert wait(client, earlier["holder"], lambda j: j.status in FINAL).status == Status.CANCELLED
    assert wait(client, earlier["later"], lambda j: j.status in FINAL).status == Status.SUCCEEDED
    # A job that is not failed or cancelled is refused, as documented.
    hash_model, hash_example = kinds()["hash"]
    done = submit(client, hash_model, hash_example).parsed.id
    wait(client, done, lambda j: j.status in FINAL)
    assert call(redrive_job, 409, Problem, client, id=done).parsed.status == 409


def test_a_schedule_fires_pauses_resumes_changes_and_goes(client):
    _, hash_example = kinds()["hash"]
    name = f"every-second-{uuid.uuid4().hex[:8]}"
    wanted = {"name": name, "kind": "hash", "payload": hash_example["payload"], "interval_secs": 1,
              "missed": "skip"}
    models = typing.get_args(typing.get_type_hints(create_schedule.sync_detailed)["body"])
    body = next(m for m in models if reads(m, wanted)).from_dict(wanted)
    made = call(create_schedule, 201, Schedule, client, body=body).parsed
    assert made.name == name and made.enabled and made.missed == Missed.SKIP
    assert call(create_schedule, 409, Problem, client, body=body).parsed.status == 409
    deadline = time.monotonic() + 30
    while not listed(client, schedule=name):
        assert time.monotonic() < deadline, "the schedule never fired"
        time.sleep(0.2)
    fired = call(get_job, 200, Job, client, id=listed(client, schedule=name)[0]).parsed
    assert fired.fired_by.schedule == name
    assert name in [s.name for s in call(list_schedules, 200, list, client).parsed]
    paused = call(pause_schedule, 200, Schedule, client, name=name).parsed
    assert not paused.enabled and paused.next_fire_at is None
    assert call(resume_schedule, 200, Schedule, client, name=name).parsed.enabled
    changed = call(change_schedule, 200, Schedule, client, name=name,
                   body=SchedulePatch.from_dict({"cron": "0 3 * * *", "time_zone": "Europe/Paris"})).parsed
    assert (changed.cron, changed.interval_secs, changed.time_zone) == ("0 3 * * *", None, "Europe/Paris")
    bad = call(change_schedule, 422, Problem, client, name=name,
               body=SchedulePatch.from_dict({"time_zone": "Nowhere/Land"})).parsed
    assert bad.detail.startswith("time_zone:")
    assert call(get_schedule, 200, Schedule, client, name=name).parsed.time_zone == "Europe/Paris"
    call(delete_schedule, 204, type(None), client, name=name)
    assert call(get_schedule, 404, Problem, client, name=name).parsed.status == 404


def test_a_workflow_runs_in_order_and_a_cancel_stops_one(client):
    _, hash_example = kinds()["hash"]
    step = lambda key, deps: {"key": key, "kind": "hash", "payload": hash_example["payload"], "depends_on": deps}  # noqa: E731
    body = WorkflowRequest.from_dict({"name": "diamond", "jobs": [
        step("a", []), step("b", ["a"]), step("c", [{"key": "a", "on_failure": "ignore"}]), step("d", ["b", "c"])]})
    made = call(create_workflow, 201, Workflow, client, body=body).parsed
    assert made.status == WorkflowStatus.RUNNING and made.jobs == 4
    deadline = time.monotonic() + 60
    while (w := call(get_workflow, 200, Workflow, client, id=made.id).parsed).status == WorkflowStatus.RUNNING:
        assert time.monotonic() < deadline, f"workflow {made.id} still running"
        time.sleep(0.2)
    assert w.status == WorkflowStatus.SUCCEEDED
    d = next(s for s in w.steps if s.key == "d")
    assert sorted(d.depends_on) == ["b", "c"] and d.job.status == Status.SUCCEEDED
    assert made.id in [x.id for x in call(list_workflows, 200, WorkflowPage, client, status=WorkflowStatus.SUCCEEDED).parsed.items]
    slow = {"key": "slow", "kind": "sleep", "payload": {"duration_ms": 20000, "steps": 20}}
    held = call(create_workflow, 201, Workflow, client,
                body=WorkflowRequest.from_dict({"jobs": [slow, step("after", ["slow"])]})).parsed
    call(cancel_workflow, 202, Workflow, client, id=held.id)
    deadline = time.monotonic() + 30
    while (w := call(get_workflow, 200, Workflow, client, id=held.id).parsed).status == WorkflowStatus.RUNNING:
        assert time.monotonic() < deadline, f"workflow {held.id} still running after its cancel"
        time.sleep(0.2)
    assert w.status == WorkflowStatus.CANCELLED
    assert call(get_workflow, 404, Problem, client, id=uuid.uuid4()).parsed.status == 404


def test_a_paused_kind_holds_its_jobs_until_resumed(client):
    model, example = kinds()["sleep"]
    paused = call(pause_kind, 200, KindStatus, client, kind=Kind.SLEEP).parsed
    assert paused.paused_at is not None
    try:
        body = dict(example, payload={"duration_ms": 10, "steps": 1}, priority=9,
                    concurrency_key="customer-1")
        job = submit(client, model, body).parsed
        held = wait(client, job.id, lambda j: j.held == Held.PAUSED)
        assert (held.priority, held.concurrency_key) == (9, "customer-1")
        status = {k.kind: k for k in call(list_kinds, 200, list, client).parsed}
        assert status["sleep"].held.additional_properties.get("paused", 0) >= 1
    finally:
        resumed = call(resume_kind, 200, KindStatus, client, kind=Kind.SLEEP).parsed
    assert resumed.paused_at is None
    assert wait(client, job.id, lambda j: j.status in FINAL).status == Status.SUCCEEDED


def test_keys_roles_and_the_audit_trail(client):
    made = call(create_key, 201, NewKeyAnswer, client, body=KeyRequest(name="viewer-1", role=Role.VIEWER)).parsed
    assert re.fullmatch(r"jsk_[0-9a-f]{64}", made.secret) and made.role == Role.VIEWER
    listed_keys = call(list_keys, 200, list, client).parsed
    mine = [k for k in listed_keys if k.id == made.id]
    assert len(mine) == 1 and isinstance(mine[0], Key) and made.secret not in str(mine[0].to_dict())
    # A viewer reads, and may not act: 403, as the document says.
    with AuthenticatedClient(base_url=URL, token=made.secret, raise_on_unexpected_status=True) as viewer:
        assert isinstance(list_kinds.sync_detailed(client=viewer).parsed, list)
        refused = pause_kind.sync_detailed(client=viewer, kind=Kind.HASH)
        assert refused.status_code == 403 and isinstance(refused.parsed, Problem), refused.content
    # No key at all: 401.
    with Client(base_url=URL, raise_on_unexpected_status=True) as anonymous:
        refused = list_jobs.sync_detailed(client=anonymous)
        assert refused.status_code == 401 and isinstance(refused.parsed, Problem), refused.content
    call(revoke_key, 204, type(None), client, id=made.id)
    with AuthenticatedClient(base_url=URL, token=made.secret, raise_on_unexpected_status=True) as revoked:
        assert list_kinds.sync_detailed(client=revoked).status_code == 401
    trail = call(list_audit, 200, list, client, limit=5).parsed
    assert all(isinstance(e, AuditEntry) for e in trail)
    assert [e.action for e in trail[:2]] == ["key.revoke", "key.create"], [e.action for e in trail]
    assert trail[0].target == str(made.id) and trail[0].actor == "demo"


def test_every_operation_was_driven():
    doc = httpx.get(URL + "/openapi.json").json()
    operations = {re.sub(r"(?<!^)(?=[A-Z])", "_", op["operationId"]).lower()
                  for item in doc["paths"].values() for op in item.values()}
    assert operations == driven, f"not driven here: {sorted(operations - driven)}"

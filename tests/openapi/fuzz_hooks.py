"""Schemathesis hooks for `make fuzz`: checks of our own, for what the document cannot state as a
schema.

`POST /jobs` refuses a schema-valid request with 422 in three cases the document cannot state:
its Idempotency-Key was used before with another body (422 is the IETF idempotency-key draft's
status for it), its `run_at` is more than 30 days ahead (both depend on the server's state or
clock, not on the request alone), or its `payload_version` is older than the kind's and its
payload does not have that version's shape (the document states the current version's only).
schemathesis.toml lets `positive_data_acceptance` take a 422 from `POST /jobs`; this check takes
back everything else: a schema-valid request refused with 422 must be one of those three,
and the refusal must be true. It also holds a replay (`Idempotent-Replayed: true`) to the job the
key was first answered with (the one it created, or the unique job it duplicated)."""
import datetime
import json
import re
import threading

import schemathesis
from hypothesis import strategies as st

MAX_DELAY = datetime.timedelta(days=30)  # jobs_contract::MAX_DELAY
CLOCK_SLACK = datetime.timedelta(minutes=1)

_lock = threading.Lock()
# Idempotency-Key as the api reads it -> (the body that created a job with it, that job's id).
_created = {}


def _key(raw):
    """The key `idempotency::key` reads from a header value (bare, or an RFC 8941 String)."""
    raw = raw.strip(" ")
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return re.sub(r'\\(["\\])', r"\1", raw[1:-1])
    return raw


def _canonical(body):
    return json.dumps(body, sort_keys=True)


def _run_at(text):
    """An RFC 3339 date-time (any case, leap second, any offset) as an aware datetime."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)", text)
    if not m:
        return None
    date, hm, sec, frac, offset = m.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    # A leap second is the second before the next minute, as chrono reads it.
    sec = min(int(sec), 59)
    return datetime.datetime.fromisoformat(f"{date}T{hm}:{sec:02d}{(frac or '')[:7]}{offset}")


# The formats of a schedule's strings that JSON Schema cannot spell out (the document names them):
# what a client would send, so that fuzzed schedules are mostly valid ones.
schemathesis.openapi.format("cron", st.sampled_from([
    "* * * * *", "*/5 * * * *", "0 3 * * *", "30 9 * * MON-FRI", "0 0 1 * *", "0 12 L * *",
    "15,45 */2 * * *", "*/10 * * * * *", "0 0 9 ? * 2#1", "@daily", "@hourly", "0 30 2 * * *",
]))
schemathesis.openapi.format("iana-time-zone", st.sampled_from([
    "UTC", "Europe/Paris", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
    "Pacific/Chatham", "America/Sao_Paulo",
]))

@schemathesis.hook
def map_case(ctx, case):
    """A schema-valid workflow is also a graph: its keys unique, and each dependency naming a job
    before it (so no cycle). The schema cannot say so; generated ones are made so, and the api must
    then take them (positive cases only: a negative one keeps what makes it invalid)."""
    if case.operation.method.upper() != "POST" or case.operation.path != "/workflows":
        return case
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    jobs = case.body.get("jobs") if isinstance(case.body, dict) else None
    if not positive or not isinstance(jobs, list):
        return case
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue
        job["key"] = f"j{i}"
        deps = job.get("depends_on")
        if isinstance(deps, list):
            # The same repair on every run (str hashes vary between Python processes).
            earlier = sorted({f"j{sum(map(ord, str(d))) % i}" for d in deps}) if i else []
            job["depends_on"] = earlier
    return case


# What a schedule's schema cannot state: whether its cron expression and time zone parse, and
# whether its payload is the kind's (the document types it as any JSON).
SCHEDULE_FIELDS_BEYOND_THE_SCHEMA = ("cron:", "time_zone:", "payload:", "payload_version:")


@schemathesis.check
def schedule_refusals_name_a_field_beyond_the_schema(ctx, response, case):
    if case.operation.path not in ("/schedules", "/schedules/{name}") or response.status_code != 422:
        return None
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive:
        return None
    detail = response.json().get("detail", "")
    assert detail.startswith(SCHEDULE_FIELDS_BEYOND_THE_SCHEMA), f"a schema-valid schedule was refused: {detail}"
    return None


@schemathesis.check
def create_job_refusals_are_true(ctx, response, case):
    if case.operation.method.upper() != "POST" or case.operation.path != "/jobs":
        return None
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    key = _key(headers["idempotency-key"]) if isinstance(headers.get("idempotency-key"), str) else None
    body = case.body if isinstance(case.body, dict) else None
    # A duplicate of a unique job (200) binds its key to that job, as a created one (202) does.
    if response.status_code in (200, 202) and key is not None and body is not None:
        job = response.json()["id"]
        with _lock:
            first = _created.setdefault(key, (_canonical(body), job))
        if response.headers.get("idempotent-replayed") == ["true"]:
            assert first[1] == job, f"replayed key {key!r} answered job {job}, not {first[1]}, the one it created"
        return None
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if response.status_code != 422 or not positive:
        return None
    detail = response.json().get("detail", "")
    if "Idempotency-Key was already used" in detail:
        with _lock:
            first = _created.get(key)
        assert first is not None, f"422 says key {key!r} was used before, but no request of this run created a job with it"
        assert first[0] != _canonical(body), f"422 says key {key!r} was used with another body, but it is the same body"
        return None
    if "run_at is more than" in detail:
        at = _run_at(body.get("run_at") or "")
        now = datetime.datetime.now(datetime.timezone.utc)
        assert at is not None and at > now + MAX_DELAY - CLOCK_SLACK, f"run_at {body.get('run_at')!r} is not more than 30 days ahead"
        return None
    older = re.match(r"payload_version: payload version (\d+) cannot be read \(the kind is at version (\d+)\)", detail)
    if older:
        # The document states the payload of the kind's current version only; an older version's
        # payload has that version's shape, which it may not match.
        version, current = map(int, older.groups())
        assert version < current, f"payload_version {version} refused, but the kind is at version {current}"
        return None
    raise AssertionError(f"a schema-valid job was refused: {detail}")

//! The OpenAPI document: paths from the routes as they are registered (utoipa-axum), completed
//! with what only the running api knows: the job contract's kinds (`POST /jobs` as a `oneOf`
//! discriminated by `kind`, each with its payload's JSON Schema and an example; `kind` filters
//! as an enum of them) and the headers its layers add to answers.

use jobs_contract::{Catalog, JobRequest};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

/// The parts of the document that are not paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobstack api",
        description = "Accepts long-running jobs, keeps their state, reports their progress. \
                       Every error is `application/problem+json` (RFC 9457). Besides the \
                       answers listed with each operation, a path the api does not serve is a \
                       404 and a method a path does not take is a 405 with `Allow`."
    ),
    paths(metrics, openapi_json),
    components(schemas(
        super::jobs::view::Job,
        super::jobs::view::JobPage,
        super::jobs::view::Redriven,
        super::jobs::view::CheckpointInfo,
        super::jobs::view::FiredBy,
        super::workflows::WorkflowSummary,
        crate::lifecycle::Status,
        crate::lifecycle::PastGeneration,
        crate::error::Problem
    ))
)]
pub struct ApiDoc;

/// Prometheus metrics. Served outside the traced routes: scrapes make no spans.
///
/// OpenMetrics 1.0 with exemplars (trace ids on the latency buckets) when `Accept` names
/// `application/openmetrics-text`, as Prometheus does; else the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics", responses(
    (status = 200, description = "Prometheus text exposition format, or OpenMetrics if asked for", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text"),
    )),
))]
#[allow(dead_code)] // documents the route `routes::app` serves with `shared::metrics::serve`
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi", responses(
    (status = 200, description = "the OpenAPI 3.1 document of this api", body = Object, content_type = "application/json"),
))]
#[allow(dead_code)] // documents the route `routes::app` serves with this module's `document`
fn openapi_json() {}

/// The whole document: `paths` (what the router serves) completed with the job contract.
pub(super) fn document(paths: utoipa::openapi::OpenApi, kinds: &Catalog) -> Value {
    let mut doc = serde_json::to_value(paths).expect("the document serializes");
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas");
    let schedule = JobRequest::schedule_properties();
    let description = json!(
        "A job to run: its kind and that kind's payload, and when it may run \
         (`run_at` or `delay_ms`, at most 30 days ahead; by default now)."
    );
    by_kind(schemas, "CreateJob", description, kinds, |kind, payload| {
        let example = json!({ "kind": kind, "payload": kinds.example(kind) });
        let mut properties = json!({
            "kind": { "type": "string", "const": kind },
            "payload": payload,
        });
        if let (Some(p), Some(s)) = (properties.as_object_mut(), schedule.as_object()) {
            p.extend(s.clone());
        }
        // A version newer than the kind's is refused; an older one is read through the kind's
        // upgrade, in that version's shape (which this document does not state).
        properties["payload_version"]["maximum"] = json!(kinds.version(kind));
        json!({
            "type": "object",
            "title": kind,
            "required": ["kind", "payload"],
            "additionalProperties": false,
            "properties": properties,
            // `run_at` and `delay_ms` exclude each other; either may be null.
            "not": {
                "required": ["run_at", "delay_ms"],
                "properties": { "run_at": { "type": "string" }, "delay_ms": { "type": "integer" } },
            },
            "examples": [example],
        })
    });
    let create = &mut doc["paths"]["/jobs"]["post"];
    create["requestBody"]["content"]["application/json"]["schema"] =
        json!({ "$ref": "#/components/schemas/CreateJob" });
    create["requestBody"]["required"] = json!(true);
    // From an accepted job to reading and cancelling it.
    let by_id = json!({ "id": "$response.body#/id" });
    create["responses"]["202"]["links"] = json!({
        "GetJob": { "operationId": "getJob", "parameters": by_id,
                    "description": "The job's state: poll it until it is final." },
        "CancelJob": { "operationId": "cancelJob", "parameters": by_id,
                       "description": "Cancel it while it is scheduled, queued or running." },
        "RedriveJob": { "operationId": "redriveJob", "parameters": by_id,
                        "description": "Run it again once it has failed or been cancelled." },
    });
    schedule_variants(&mut doc, kinds);
    workflow_job_variants(&mut doc, kinds);
    kind_enum(&mut doc, kinds);
    security(&mut doc);
    headers(&mut doc);
    // The lifecycle's own doc comment speaks of storage; the public schema says what it means.
    doc["components"]["schemas"]["Status"]["description"] = json!(
        "Where a job is in its lifecycle: `scheduled` (waiting for its `run_at`), `queued`, \
         `running`, then one of the final `succeeded`, `failed` or `cancelled`."
    );
    doc
}

/// `POST /schedules` as a `oneOf` by kind, as `POST /jobs` is: each variant with its kind's
/// payload schema. A cron expression and a time zone are strings of the formats `cron` and
/// `iana-time-zone`, which JSON Schema cannot spell out; their descriptions do.
fn schedule_variants(doc: &mut Value, kinds: &Catalog) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas");
    let mut base = schemas
        .remove("ScheduleRequest")
        .expect("the schedule request is documented");
    formatted(&mut base["properties"]["cron"], "cron");
    formatted(&mut base["properties"]["time_zone"], "iana-time-zone");
    // Its bounds say it; utoipa's `int64` format on a nullable integer reads as a format that
    // `null` violates to some validators.
    base["properties"]["interval_secs"]
        .as_object_mut()
        .map(|p| p.remove("format"));
    // `cron` and `interval_secs` exclude each other.
    let one_timing = json!({
        "required": ["cron", "interval_secs"],
        "properties": { "cron": { "type": "string" }, "interval_secs": { "type": "integer" } },
    });
    if let Some(patch) = schemas.get_mut("SchedulePatch") {
        formatted(&mut patch["properties"]["cron"], "cron");
        formatted(&mut patch["properties"]["time_zone"], "iana-time-zone");
        patch["not"] = one_timing.clone();
        patch["properties"]["interval_secs"]
            .as_object_mut()
            .map(|p| p.remove("format"));
    }
    let description = base["description"].clone();
    by_kind(
        schemas,
        "CreateSchedule",
        description,
        kinds,
        |kind, payload| {
            let mut variant = base.clone();
            variant["title"] = json!(format!("{kind} schedule"));
            variant["properties"]["kind"] = json!({ "type": "string", "const": kind });
            variant["properties"]["payload"] = payload;
            variant["properties"]["payload_version"]["maximum"] = json!(kinds.version(kind));
            // One of `cron` and `interval_secs` is needed: the description says it, as a schema it
            // would be a `oneOf` that generated clients cannot read.
            variant["not"] = one_timing.clone();
            variant["examples"] = json!([{
                "name": format!("nightly-{kind}"), "kind": kind, "payload": kinds.example(kind),
                "cron": "0 3 * * *", "time_zone": "Europe/Paris", "missed": "one",
            }]);
            variant
        },
    );
    let create = &mut doc["paths"]["/schedules"]["post"];
    create["requestBody"]["content"]["application/json"]["schema"] =
        json!({ "$ref": "#/components/schemas/CreateSchedule" });
    let by_name = json!({ "name": "$response.body#/name" });
    create["responses"]["201"]["links"] = json!({
        "GetSchedule": { "operationId": "getSchedule", "parameters": by_name },
        "ChangeSchedule": { "operationId": "changeSchedule", "parameters": by_name },
        "PauseSchedule": { "operationId": "pauseSchedule", "parameters": by_name },
        "ResumeSchedule": { "operationId": "resumeSchedule", "parameters": by_name },
        "DeleteSchedule": { "operationId": "deleteSchedule", "parameters": by_name },
    });
}

/// A workflow's jobs as a `oneOf` by kind, as `POST /jobs` is: each variant with its kind's
/// payload schema.
fn workflow_job_variants(doc: &mut Value, kinds: &Catalog) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas");
    let base = schemas
        .remove("WorkflowJob")
        .expect("a workflow's job is documented");
    let description = base["description"].clone();
    by_kind(
        schemas,
        "WorkflowJob",
        description,
        kinds,
        |kind, payload| {
            let mut variant = base.clone();
            variant["title"] = json!(format!("{kind} step"));
            variant["properties"]["kind"] = json!({ "type": "string", "const": kind });
            variant["properties"]["payload"] = payload;
            variant["properties"]["payload_version"]["maximum"] = json!(kinds.version(kind));
            variant
        },
    );
    let id = json!({ "id": "$response.body#/id" });
    doc["paths"]["/workflows"]["post"]["responses"]["201"]["links"] = json!({
        "GetWorkflow": { "operationId": "getWorkflow", "parameters": id },
        "CancelWorkflow": { "operationId": "cancelWorkflow", "parameters": id },
    });
}

/// Inserts `name` (a `oneOf` with one schema per kind, discriminated by `kind`) after each
/// kind's variant `name_<kind>`, which `variant` makes from the kind's payload schema.
fn by_kind(
    schemas: &mut Map<String, Value>,
    name: &str,
    description: Value,
    kinds: &Catalog,
    mut variant: impl FnMut(&str, Value) -> Value,
) {
    let mut variants = Vec::new();
    let mut mapping = Map::new();
    for kind in kinds.names() {
        let mut payload = kinds.schema(kind).expect("every kind has a schema");
        if let Some(p) = payload.as_object_mut() {
            p.remove("$schema"); // the document's dialect (JSON Schema 2020-12) already applies
        }
        let variant_name = format!("{name}_{kind}");
        let mut schema = variant(kind, payload);
        // Its bounds say it (1 to the kind's version); utoipa's integer format on a nullable
        // integer reads as a format that `null` violates to some validators (schemathesis
        // answered ST201 to `"payload_version": null`, which means the kind's current version).
        if let Some(p) = schema
            .pointer_mut("/properties/payload_version")
            .and_then(Value::as_object_mut)
        {
            p.remove("format");
        }
        schemas.insert(variant_name.clone(), schema);
        let reference = format!("#/components/schemas/{variant_name}");
        mapping.insert(kind.to_owned(), json!(reference));
        variants.push(json!({ "$ref": reference }));
    }
    schemas.insert(
        name.to_owned(),
        json!({
            "description": description,
            "oneOf": variants,
            "discriminator": { "propertyName": "kind", "mapping": mapping },
        }),
    );
}

/// A nullable string property with `format`: the format on the string alone (as `oneOf` string
/// or null), since some validators read a format beside `"type": ["string", "null"]` as one
/// that `null` violates.
fn formatted(property: &mut Value, format: &str) {
    let description = property.get("description").cloned();
    *property = json!({ "oneOf": [{ "type": "string", "format": format }, { "type": "null" }] });
    if let Some(description) = description {
        property["description"] = description;
    }
}

/// `Kind`, the contract's kinds, as the schema of the parameters that filter by kind or name
/// one (which refuse any other). A job's own `kind` stays a string: a stored job may be of a kind that a
/// later build dropped, and a client must still read it.
fn kind_enum(doc: &mut Value, kinds: &Catalog) {
    let names: Vec<&str> = kinds.names().collect();
    doc["components"]["schemas"]["Kind"] = json!({
        "type": "string",
        "description": "A kind of job this api accepts: which handler runs it.",
        "enum": names,
    });
    let kind = json!({ "$ref": "#/components/schemas/Kind" });
    let takes_a_kind = [
        ("/jobs", "get"),
        ("/kinds/{kind}/pause", "post"),
        ("/kinds/{kind}/resume", "post"),
    ];
    for (path, method) in takes_a_kind {
        for param in doc["paths"][path][method]["parameters"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "kind")
        {
            param["schema"] = kind.clone();
        }
    }
    doc["components"]["schemas"]["RedriveMany"]["properties"]["kind"] = json!({
        "description": "Only jobs of this kind.",
        "oneOf": [kind, { "type": "null" }],
    });
}

/// Who may call what, from `access::RULES` (the table the access layer enforces): the bearer
/// scheme, each operation's roles (one requirement per role: any of them will do), and the
/// answers the layer gives before a handler runs: 401, 403 where some role is refused, and 429
/// when a submit is over its client's quota.
fn security(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`jsk_` and 64 hex digits) as `Authorization: Bearer <key>`. \
                            An admin makes keys with `POST /keys` (the first one with `make api-key`). \
                            The roles an operation admits are listed as its requirements' scopes.",
        }
    });
    let problem = |description: &str| {
        json!({ "description": description,
                "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" } } } })
    };
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().into_iter().flatten() {
            let verb = axum::http::Method::from_bytes(method.to_uppercase().as_bytes())
                .expect("documented methods are methods");
            let access = crate::access::rule(&verb, path)
                .unwrap_or_else(|| panic!("{verb} {path} has no rule in access::RULES"));
            if access == crate::access::Access::Public {
                op["security"] = json!([]);
                continue;
            }
            let roles = access.roles();
            op["security"] = Value::Array(
                roles
                    .iter()
                    .map(|r| json!({ "apiKey": [r.as_str()] }))
                    .collect(),
            );
            let responses = &mut op["responses"];
            let mut unauthorized =
                problem("no API key, or not a valid one (unknown, revoked or expired)");
            unauthorized["headers"]["WWW-Authenticate"] = json!({ "description": "`Bearer realm=\"jobstack\"`", "schema": { "type": "string" } });
            responses["401"] = unauthorized;
            if roles.len() < crate::access::Role::ALL.len() {
                let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                responses["403"] = problem(&format!(
                    "a valid key whose role may not do this (it takes {})",
                    names.join(", ")
                ));
            }
            let mut over = problem(if access == crate::access::Access::Submit {
                "over the client's submit rate or in-flight cap: send it again after `Retry-After`"
            } else {
                "over the client's in-flight cap: send it again after `Retry-After`"
            });
            over["headers"]["Retry-After"] = json!({ "$ref": "#/components/headers/Retry-After" });
            responses["429"] = over;
        }
    }
}

/// The headers the layers add: `traceparent` on every answer that went through
/// `observe::observe` (all but `/metrics`), and `Retry-After` on every 503 of `ApiError`
/// (the `/jobs` operations; `/readyz` answers a probe, which has its own period).
fn headers(doc: &mut Value) {
    doc["components"]["headers"] = json!({
        "traceparent": {
            "description": "The W3C trace context of the api's span for this request: quote it \
                            when reporting a problem.",
            "required": true,
            "schema": { "type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$" },
        },
        "Retry-After": {
            "description": "Seconds to wait before sending the same request again.",
            "required": true,
            "schema": { "type": "integer", "minimum": 0 },
        },
    });
    let traceparent = json!({ "$ref": "#/components/headers/traceparent" });
    let retry_after = json!({ "$ref": "#/components/headers/Retry-After" });
    let paths = doc["paths"].as_object_mut().expect("paths");
    for (path, item) in paths.iter_mut().filter(|(path, _)| *path != "/metrics") {
        for op in item.as_object_mut().into_iter().flatten().map(|(_, op)| op) {
            for (status, response) in op["responses"].as_object_mut().into_iter().flatten() {
                response["headers"]["traceparent"] = traceparent.clone();
                if status == "503" && path.starts_with("/jobs") {
                    response["headers"]["Retry-After"] = retry_after.clone();
                }
            }
        }
    }
}

//! The OpenAPI document: paths from the routes as they are registered (utoipa-axum), and the job
//! contract's kinds in `POST /jobs` as a `oneOf` discriminated by `kind`, each with its payload's
//! JSON Schema and an example (from `jobs_contract`).

use jobs_contract::{Catalog, JobRequest};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

/// The parts of the document that are not paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobstack api",
        description = "Accepts long-running jobs, keeps their state, reports their progress."
    ),
    paths(metrics, openapi_json),
    components(schemas(
        super::jobs::view::Job,
        super::jobs::view::JobPage,
        super::jobs::view::Redriven,
        super::jobs::view::CheckpointInfo,
        crate::lifecycle::Status,
        crate::lifecycle::PastGeneration,
        crate::error::Problem
    ))
)]
pub struct ApiDoc;

/// Prometheus metrics (text format). Served outside the traced routes: scrapes make no spans.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
))]
#[allow(dead_code)] // documents the route `routes::app` serves with `shared::metrics::render`
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi", responses(
    (status = 200, description = "the OpenAPI 3.1 document of this api", content_type = "application/json"),
))]
#[allow(dead_code)] // documents the route `routes::app` serves with this module's `document`
fn openapi_json() {}

/// The whole document: `paths` (what the router serves) completed with the job contract.
pub(super) fn document(paths: utoipa::openapi::OpenApi, kinds: &Catalog) -> Value {
    let mut doc = serde_json::to_value(paths).expect("the document serializes");
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("components.schemas");
    let mut variants = Vec::new();
    let mut mapping = Map::new();
    let schedule = JobRequest::schedule_properties();
    for kind in kinds.names() {
        let name = format!("CreateJob_{kind}");
        let mut payload = kinds.schema(kind).expect("every kind has a schema");
        if let Some(p) = payload.as_object_mut() {
            p.remove("$schema"); // the document's dialect (JSON Schema 2020-12) already applies
        }
        let example = json!({ "kind": kind, "payload": kinds.example(kind) });
        let mut properties = json!({
            "kind": { "type": "string", "const": kind },
            "payload": payload,
        });
        if let (Some(p), Some(s)) = (properties.as_object_mut(), schedule.as_object()) {
            p.extend(s.clone());
        }
        schemas.insert(
            name.clone(),
            json!({
                "type": "object",
                "title": kind,
                "required": ["kind", "payload"],
                "additionalProperties": false,
                "properties": properties,
                "examples": [example],
            }),
        );
        let reference = format!("#/components/schemas/{name}");
        mapping.insert(kind.to_owned(), json!(reference));
        variants.push(json!({ "$ref": reference }));
    }
    schemas.insert(
        "CreateJob".into(),
        json!({
            "description": "A job to run: its kind and that kind's payload, and when it may run \
                            (`run_at` or `delay_ms`, at most 30 days ahead; by default now).",
            "oneOf": variants,
            "discriminator": { "propertyName": "kind", "mapping": mapping },
        }),
    );
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
    doc
}

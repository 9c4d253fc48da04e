//! `POST /jobs`: accept a job.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use jobs_contract::JobRequest;
use jobs_contract::kinds::PayloadError;
use shared::telemetry::propagation;

use super::view::Job;
use crate::AppState;
use crate::access::Caller;
use crate::error::{ApiError, Problem};
use crate::idempotency;
use crate::routes::body::{Body, Named};
use crate::store::{self, Inserted, NewJob, Stored};

/// Accepts a job. The 202 means the job is committed to PostgreSQL and will run, even if
/// RabbitMQ is down right now. The request body is a `CreateJob`: one of the kinds, each with
/// its payload's schema.
// The body's schema is filled in from the job contract by `openapi::document`.
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "createJob",
    request_body(content = Object, description = "a `CreateJob`"),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Repeat a request safely: the same key with the same body answers with the job the first one created (for `IDEMPOTENCY_KEY_TTL`, 24 h by default), with `Idempotent-Replayed: true`. A Structured Field String (`\"...\"`) or bare printable ASCII, 1–255 characters.",
        // What `idempotency::key` takes: a bare token of printable ASCII without `"` or `\`,
        // or an RFC 8941 String (`\"` and `\\` escaped); 1–255 characters either way.
        pattern = r#"^(?:[!#-\[\]-~]{1,255}|"(?:[ !#-\[\]-~]|\\["\\]){1,255}")$"#)),
    responses(
    (status = 200, description = "a duplicate of a unique job (the same `unique_key`, or what the kind's uniqueness compares): nothing was created; the body is that job", body = Job,
        headers(("Location" = String, description = "the unique job's URL, `/jobs/{id}`"),
                ("Unique-Duplicate" = String, description = "`true`"))),
    (status = 202, description = "accepted (or replayed); `Location` names the job", body = Job,
        headers(("Location" = String, description = "the job's URL, `/jobs/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when an earlier request with the same Idempotency-Key created the job"))),
    (status = 400, description = "malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    (status = 408, description = "not answered within `REQUEST_TIMEOUT_SECS`; the job may have been accepted all the same: send the request again with the same Idempotency-Key to learn which", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "body over the limit", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "unknown kind, invalid payload, a payload_version the kind cannot read, an invalid schedule, priority, concurrency_key or unique_key, or an Idempotency-Key already used with another body", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL unavailable, or the api is shutting down: send the same request again after `Retry-After`", body = Problem, content_type = "application/problem+json"),
))]
pub(super) async fn submit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Body<JobRequest>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let key = idempotency::key(&headers).map_err(ApiError::BadRequest)?;
    let Body(req) = body?;
    let job = NewJob {
        client: Some(caller.client.clone()),
        ..validate(&state, &req)?
    };
    // Each client has its own keys: another client's same key is another request, and never
    // answers with this client's job.
    let key = key.map(|key| store::Key {
        key: idempotency::scoped(&caller.client, &key),
        fingerprint: idempotency::fingerprint(&req),
        ttl: state.config.idempotency_ttl,
    });
    let (stored, replayed) = match state.committer.accept(job, key).await? {
        Inserted::Created(stored) => (stored, false),
        Inserted::Replayed(job) => (Stored::New(job), true),
        Inserted::KeyReused => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used with a different request body; use a \
                 new key for a new job"
                    .into(),
            ));
        }
    };
    let mut headers = HeaderMap::new();
    let (status, job) = match stored {
        Stored::New(job) => (StatusCode::ACCEPTED, job),
        // The unique job this one would duplicate: answered as it is, nothing created.
        Stored::Duplicate(job) => {
            headers.insert("unique-duplicate", HeaderValue::from_static("true"));
            tracing::info!(job.id = %job.id, job.kind = %job.kind, "duplicate of a unique job");
            metrics::counter!("jobstack_jobs_deduplicated_total", "kind" => job.kind.clone())
                .increment(1);
            (StatusCode::OK, job)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        tracing::info!(job.id = %job.id, job.kind = %job.kind, "job request replayed");
    } else if status == StatusCode::ACCEPTED {
        // Committed: from here the relay owns publishing it.
        metrics::counter!("jobstack_jobs_created_total", "kind" => job.kind.clone()).increment(1);
        tracing::info!(job.id = %job.id, job.kind = %job.kind, run_at = %job.run_at, "job accepted");
    }
    Ok((status, headers, Json(Job::from(job))))
}

/// Checks the request against the contract (kind, payload, schedule) and makes the job to
/// store, joined to the request's trace.
impl Named for JobRequest {
    const WHAT: &'static str = "job";
}

pub(crate) fn validate(state: &AppState, req: &JobRequest) -> Result<NewJob, ApiError> {
    if !state.kinds.contains(&req.kind) {
        let known: Vec<_> = state.kinds.names().collect();
        return Err(ApiError::Unprocessable(format!(
            "unknown kind {:?}; known kinds: {}",
            req.kind,
            known.join(", ")
        )));
    }
    let current = state.kinds.version(&req.kind).unwrap_or(1);
    let version = req.payload_version.unwrap_or(current);
    state
        .kinds
        .read(&req.kind, version, req.payload.clone())
        .map_err(|e| match e {
            PayloadError::Version { .. } => {
                ApiError::Unprocessable(format!("payload_version: {e}"))
            }
            other => ApiError::Unprocessable(format!("invalid payload for {}: {other}", req.kind)),
        })?;
    let schedule = req
        .schedule(Utc::now())
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    req.check_flow().map_err(ApiError::Unprocessable)?;
    let span = tracing::Span::current();
    Ok(NewJob {
        schedule,
        trace_id: propagation::trace_id(&span).unwrap_or_default(),
        traceparent: propagation::traceparent(&span),
        priority: req.priority.unwrap_or(0),
        concurrency_key: req.concurrency_key.clone(),
        unique: state
            .flow
            .claim(&req.kind, &req.payload, req.unique_key.as_deref()),
        ..NewJob::now(&req.kind, req.payload.clone(), version)
    })
}

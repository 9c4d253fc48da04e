//! The console's actions: plain HTML forms (they work without JavaScript), each checked for the
//! session's CSRF token and role, done through the same store functions as the JSON api, and
//! recorded in the audit trail in the same transaction. Each answers with a redirect (303), so
//! a reload never sends a form twice.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::pages::{BULK_MAX, Frame, JobsQuery};
use super::{Session, encode, render};
use crate::AppState;
use crate::access::{Access, Audit};
use crate::lifecycle::Status;
use crate::store::{self, Cancel, Inserted, Redrive, RedriveOne, Stored};

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console action failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "PostgreSQL unavailable; try again",
    )
        .into_response()
}

fn back(to: &str, done: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}done={}", encode(done))).into_response()
}

#[derive(Deserialize)]
pub(super) struct SubmitForm {
    csrf: String,
    kind: String,
    payload: String,
}

/// Submits a job, as `POST /jobs` does, and shows it.
pub(super) async fn submit(
    State(state): State<AppState>,
    s: Session,
    Form(form): Form<SubmitForm>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Submit) {
        return refused.into_response();
    }
    let refused = |why: String| back("/ui/jobs", &format!("not submitted: {why}"));
    let payload: serde_json::Value = match serde_json::from_str(&form.payload) {
        Ok(p) => p,
        Err(e) => return refused(format!("the payload is not JSON ({e})")),
    };
    let req: jobs_contract::JobRequest = match serde_json::from_value(
        serde_json::json!({ "kind": form.kind, "payload": payload }),
    ) {
        Ok(r) => r,
        Err(e) => return refused(e.to_string()),
    };
    let job = match crate::routes::validate_job(&state, &req) {
        Ok(job) => store::NewJob {
            client: Some(s.caller.client.clone()),
            ..job
        },
        Err(e) => return refused(e.to_string()),
    };
    match state.committer.accept(job, None).await {
        Ok(
            Inserted::Created(Stored::New(job) | Stored::Duplicate(job)) | Inserted::Replayed(job),
        ) => {
            metrics::counter!("jobstack_jobs_created_total", "kind" => job.kind.clone())
                .increment(1);
            tracing::info!(job.id = %job.id, job.kind = %job.kind, "job accepted from the console");
            Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response()
        }
        // Only a request with an Idempotency-Key meets one, and the form sends none.
        Ok(Inserted::KeyReused) => refused("this Idempotency-Key was already used".into()),
        Err(e) => refused(e.to_string()),
    }
}

#[derive(Deserialize)]
pub(super) struct Csrf {
    csrf: String,
}

/// Cancels one job.
pub(super) async fn cancel(
    State(state): State<AppState>,
    s: Session,
    Path(id): Path<Uuid>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Operate) {
        return refused.into_response();
    }
    let audit = Audit::new(&s.caller, "job.cancel", id.to_string());
    let page = format!("/ui/jobs/{id}");
    match store::cancel(&state.db, id, &audit).await {
        Ok(Cancel::Accepted(_)) => {
            state
                .broker
                .broadcast_cancels(state.config.amqp.publish_timeout)
                .await;
            audit.logged(1);
            back(&page, "cancel accepted")
        }
        Ok(Cancel::AlreadyFinal(job)) => back(&page, &format!("already {}", job.status)),
        Ok(Cancel::NotFound) => (StatusCode::NOT_FOUND, "no such job").into_response(),
        Err(e) => unavailable(e),
    }
}

/// Re-drives one job.
pub(super) async fn redrive(
    State(state): State<AppState>,
    s: Session,
    Path(id): Path<Uuid>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Operate) {
        return refused.into_response();
    }
    let audit = Audit::new(&s.caller, "job.redrive", id.to_string());
    let page = format!("/ui/jobs/{id}");
    match store::redrive_one(&state.db, id, &audit).await {
        Ok(RedriveOne::Requeued(_)) => {
            state.broker.wake_relay.notify_one();
            audit.logged(1);
            back(&page, "queued again")
        }
        Ok(RedriveOne::NotFound) => (StatusCode::NOT_FOUND, "no such job").into_response(),
        Ok(RedriveOne::Refused(job)) => {
            back(&page, &format!("not re-driven: it is {}", job.status))
        }
        Ok(RedriveOne::CancelPending(_) | RedriveOne::Busy(_)) => back(
            &page,
            "not re-driven yet: its cancel is still on its way; try again",
        ),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
pub(super) struct BulkForm {
    csrf: String,
    /// `cancel` or `redrive`.
    action: String,
    /// `yes` once confirmed.
    #[serde(default)]
    confirm: String,
    #[serde(flatten)]
    filter: JobsQuery,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage {
    frame: Frame,
    action: String,
    verb: &'static str,
    count: i64,
    f: JobsQuery,
    described: String,
}

/// Cancels or re-drives every job matching a filter (at most [`BULK_MAX`]): first a page with
/// the count to confirm, then the action.
pub(super) async fn bulk(
    State(state): State<AppState>,
    s: Session,
    Form(form): Form<BulkForm>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Operate) {
        return refused.into_response();
    }
    let list = format!("/ui/jobs?{}", form.filter.query());
    let parsed = match form.filter.parse(&s) {
        Ok(p) => p,
        Err(e) => return back(&list, &e),
    };
    let (verb, takes): (&'static str, &[Status]) = match form.action.as_str() {
        "cancel" => (
            "Cancel",
            &[Status::Scheduled, Status::Queued, Status::Running],
        ),
        "redrive" => ("Re-drive", &[Status::Failed, Status::Cancelled]),
        _ => return (StatusCode::BAD_REQUEST, "no such action").into_response(),
    };
    if !parsed.filter.status.is_some_and(|st| takes.contains(&st)) {
        let names: Vec<&str> = takes.iter().map(|s| s.as_str()).collect();
        return back(
            &list,
            &format!("filter by status first ({})", names.join(", ")),
        );
    }
    if form.confirm != "yes" {
        let count = match store::read::count(&state.db, parsed.filter, BULK_MAX).await {
            Ok(n) => n,
            Err(e) => return unavailable(e),
        };
        return render(&ConfirmPage {
            frame: Frame::new(&s, "jobs"),
            described: describe(&form.filter),
            action: form.action.clone(),
            verb,
            count,
            f: form.filter.clone(),
        });
    }
    let ids: Vec<Uuid> = match store::list(&state.db, parsed.filter, None, BULK_MAX as u32).await {
        Ok((rows, _)) => rows.iter().map(|j| j.id).collect(),
        Err(e) => return unavailable(e),
    };
    let target = describe(&form.filter);
    let done = if form.action == "cancel" {
        let audit = Audit::new(&s.caller, "jobs.cancel", target);
        let mut cancelled = 0;
        for id in &ids {
            // One transaction (and audit entry) per job, as each cancel of the api.
            match store::cancel(&state.db, *id, &audit).await {
                Ok(Cancel::Accepted(_)) => cancelled += 1,
                Ok(_) => {}
                Err(e) => return unavailable(e),
            }
        }
        state
            .broker
            .broadcast_cancels(state.config.amqp.publish_timeout)
            .await;
        audit.logged(cancelled);
        format!("{cancelled} job(s) cancelled")
    } else {
        let audit = Audit::new(&s.caller, "jobs.redrive", target);
        match store::redrive(&state.db, Redrive::Ids(&ids), &audit).await {
            Ok(jobs) => {
                audit.logged(jobs.len());
                format!("{} job(s) queued again", jobs.len())
            }
            Err(e) => return unavailable(e),
        }
    };
    state.broker.wake_relay.notify_one();
    back(&list, &done)
}

/// A filter in words, for the confirmation and the audit trail.
fn describe(f: &JobsQuery) -> String {
    let q = f.query();
    if q.is_empty() {
        "every job".into()
    } else {
        q.replace('&', " ")
    }
}

#[derive(Deserialize)]
pub(super) struct Verb {
    csrf: String,
}

/// Pauses or resumes a kind.
pub(super) async fn kind(
    State(state): State<AppState>,
    s: Session,
    Path((kind, verb)): Path<(String, String)>,
    Form(form): Form<Verb>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Operate) {
        return refused.into_response();
    }
    if !state.kinds.contains(&kind) {
        return (StatusCode::NOT_FOUND, "no such kind").into_response();
    }
    let changed = match verb.as_str() {
        "pause" => {
            let audit = Audit::new(&s.caller, "kind.pause", kind.clone());
            store::flow::pause(&state.db, &kind, &audit)
                .await
                .map(|c| (c, audit))
        }
        "resume" => {
            let audit = Audit::new(&s.caller, "kind.resume", kind.clone());
            store::flow::resume(&state.db, &kind, &audit)
                .await
                .map(|c| (c, audit))
        }
        _ => return (StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    match changed {
        Ok((changed, audit)) => {
            if changed {
                audit.logged(0);
            }
            state.broker.wake_relay.notify_one();
            back("/ui/kinds", &format!("{kind}: {verb}d"))
        }
        Err(e) => unavailable(e),
    }
}

/// Pauses or resumes a schedule.
pub(super) async fn schedule(
    State(state): State<AppState>,
    s: Session,
    Path((name, verb)): Path<(String, String)>,
    Form(form): Form<Verb>,
) -> Response {
    if let Err(refused) = s.allow(&form.csrf, Access::Operate) {
        return refused.into_response();
    }
    let row = match store::schedules::get(&state.db, &name).await {
        Ok(Some(row)) => row,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such schedule").into_response(),
        Err(e) => return unavailable(e),
    };
    let (action, resume_at) = match verb.as_str() {
        "pause" => ("schedule.pause", None),
        "resume" => {
            let Some(next) = row.timing().ok().and_then(|t| t.first(Utc::now())) else {
                return back("/ui/schedules", &format!("{name} never fires again"));
            };
            ("schedule.resume", Some((next, row.updated_at)))
        }
        _ => return (StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    let audit = Audit::new(&s.caller, action, name.clone());
    match store::schedules::set_enabled(&state.db, &name, resume_at, &audit).await {
        Ok(Some(_)) => {
            state.schedules_changed.notify_one();
            audit.logged(0);
            back("/ui/schedules", &format!("{name}: {verb}d"))
        }
        Ok(None) => back(
            "/ui/schedules",
            &format!("{name} changed meanwhile; try again"),
        ),
        Err(e) => unavailable(e),
    }
}

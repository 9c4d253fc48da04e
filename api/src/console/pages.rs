//! The console's pages. Each handler reads through the store, shapes what it shows into plain
//! strings (templates only lay them out), and renders. A submitter sees only its own jobs and
//! workflows, as in the JSON api; a page a role may not read is a 403.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::session::Forbidden;
use super::why::{self, Facts};
use super::{Links, Session, encode, render};
use crate::AppState;
use crate::access::Access;
use crate::lifecycle::Status;
use crate::store::{self, Cursor, Filter, JobRow};

/// What every page's frame shows: who is logged in, what the nav offers, the CSRF token.
pub(super) struct Frame {
    pub(super) client: String,
    pub(super) role: String,
    pub(super) csrf: String,
    pub(super) reads_all: bool,
    pub(super) operates: bool,
    pub(super) submits: bool,
    pub(super) page: &'static str,
}

impl Frame {
    pub(super) fn new(s: &Session, page: &'static str) -> Self {
        Self {
            client: s.caller.client.clone(),
            role: s.caller.role.to_string(),
            csrf: s.csrf.clone(),
            reads_all: s.may(Access::Read),
            operates: s.may(Access::Operate),
            submits: s.may(Access::Submit),
            page,
        }
    }
}

/// A page a role may not read.
pub(super) fn forbidden(s: &Session) -> Response {
    Forbidden(format!("role {} may not read this page", s.caller.role)).into_response()
}

fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds();
    match s {
        i64::MIN..=1 => "just now".into(),
        2..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The job list's filters, as the form sends them (blank is "any").
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct JobsQuery {
    #[serde(default)]
    pub(super) status: String,
    #[serde(default)]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) client: String,
    #[serde(default)]
    pub(super) schedule: String,
    #[serde(default)]
    pub(super) workflow: String,
    /// `15m`, `1h`, `24h`, `7d` or blank.
    #[serde(default)]
    pub(super) since: String,
    #[serde(default)]
    pub(super) cursor: String,
}

/// A filter read from the form: a bad value is named, not guessed at.
pub(super) struct Parsed<'a> {
    pub(super) filter: Filter<'a>,
    pub(super) cursor: Option<Cursor>,
}

impl JobsQuery {
    pub(super) fn parse<'a>(&'a self, s: &'a Session) -> Result<Parsed<'a>, String> {
        let blank = |v: &str| !v.trim().is_empty();
        let status = Some(self.status.as_str())
            .filter(|v| blank(v))
            .map(|v| {
                serde_json::from_value::<Status>(serde_json::Value::String(v.into()))
                    .map_err(|_| format!("status {v:?} is not a status"))
            })
            .transpose()?;
        let workflow = Some(self.workflow.trim())
            .filter(|v| !v.is_empty())
            .map(|v| Uuid::parse_str(v).map_err(|_| format!("workflow {v:?} is not an id")))
            .transpose()?;
        let since = match self.since.as_str() {
            "" => None,
            span => Some(
                shared::config::parse_span(span, false)
                    .ok()
                    .flatten()
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| Utc::now() - d)
                    .ok_or_else(|| format!("since {span:?} is not a span"))?,
            ),
        };
        let cursor = Some(self.cursor.as_str())
            .filter(|v| !v.is_empty())
            .map(|v| Cursor::decode(v).ok_or_else(|| "a malformed page cursor".to_owned()))
            .transpose()?;
        Ok(Parsed {
            filter: Filter {
                status,
                kind: text(&self.kind),
                schedule: text(&self.schedule),
                client: s.caller.only_own().or(text(&self.client)),
                workflow,
                since,
            },
            cursor,
        })
    }

    /// The query string of these filters (without the cursor).
    pub(super) fn query(&self) -> String {
        [
            ("status", &self.status),
            ("kind", &self.kind),
            ("client", &self.client),
            ("schedule", &self.schedule),
            ("workflow", &self.workflow),
            ("since", &self.since),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// A form's text field: blank is "any".
fn text(v: &str) -> Option<&str> {
    Some(v.trim()).filter(|v| !v.is_empty())
}

/// A job in a table row.
pub(super) struct Row {
    id: String,
    short: String,
    kind: String,
    status: String,
    progress: String,
    attempts: i32,
    client: String,
    origin: String,
    created: String,
}

impl From<&JobRow> for Row {
    fn from(j: &JobRow) -> Self {
        Self {
            id: j.id.to_string(),
            short: j.id.to_string()[24..].to_owned(),
            kind: j.kind.clone(),
            status: j.status.to_string(),
            progress: format!("{:.0}%", j.progress * 100.0),
            attempts: (j.attempts - j.snoozes).max(0),
            client: j.client.clone().unwrap_or_else(|| "-".into()),
            origin: j
                .schedule_name
                .as_ref()
                .map(|s| format!("schedule {s}"))
                .unwrap_or_default(),
            created: ago(j.created_at),
        }
    }
}

#[derive(Template)]
#[template(path = "jobs_table.html")]
pub(super) struct JobsTable {
    rows: Vec<Row>,
    query: String,
    next: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    frame: Frame,
    f: JobsQuery,
    statuses: Vec<&'static str>,
    kinds: Vec<String>,
    table: JobsTable,
    matching: i64,
    redrivable: bool,
    cancellable: bool,
    example: String,
    flash: Option<String>,
}

/// Most jobs a bulk action takes, and so counts.
pub(super) const BULK_MAX: i64 = 1000;

async fn table(state: &AppState, s: &Session, q: &JobsQuery) -> (JobsTable, i64) {
    let mut table = JobsTable {
        rows: Vec::new(),
        query: q.query(),
        next: None,
        error: None,
    };
    let parsed = match q.parse(s) {
        Ok(p) => p,
        Err(e) => {
            table.error = Some(e);
            return (table, 0);
        }
    };
    match store::list(&state.db, parsed.filter, parsed.cursor, 50).await {
        Ok((rows, next)) => {
            table.rows = rows.iter().map(Row::from).collect();
            table.next = next.map(|c| c.encode());
        }
        Err(e) => table.error = Some(format!("PostgreSQL: {e}")),
    }
    let matching = store::read::count(&state.db, parsed.filter, BULK_MAX)
        .await
        .unwrap_or(0);
    (table, matching)
}

#[derive(Deserialize)]
pub(super) struct Flash {
    #[serde(default)]
    done: String,
}

/// The job list: filters, a live table, bulk actions and a submit form by role.
pub(super) async fn jobs(
    State(state): State<AppState>,
    s: Session,
    Query(q): Query<JobsQuery>,
    Query(flash): Query<Flash>,
) -> Response {
    let (table, matching) = table(&state, &s, &q).await;
    let status = q.status.as_str();
    let example = state
        .kinds
        .names()
        .next()
        .and_then(|k| state.kinds.example(k))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "{}".into());
    render(&JobsPage {
        frame: Frame::new(&s, "jobs"),
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        kinds: state.kinds.names().map(str::to_owned).collect(),
        redrivable: matches!(status, "failed" | "cancelled"),
        cancellable: matches!(status, "scheduled" | "queued" | "running"),
        f: q,
        table,
        matching,
        example,
        flash: Some(flash.done).filter(|d| !d.is_empty()),
    })
}

/// The table alone, for htmx's polling.
pub(super) async fn jobs_table(
    State(state): State<AppState>,
    s: Session,
    Query(q): Query<JobsQuery>,
) -> Response {
    render(&table(&state, &s, &q).await.0)
}

/// A moment in a job's life.
pub(super) struct Moment {
    at: String,
    what: String,
}

#[derive(Template)]
#[template(path = "job_live.html")]
pub(super) struct JobLive {
    id: String,
    done: bool,
    status: String,
    progress: String,
    progress_pct: u32,
    attempts: String,
    why: Option<String>,
    result: Option<String>,
    error: Option<String>,
    timeline: Vec<Moment>,
    operates: bool,
    cancellable: bool,
    redrivable: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    frame: Frame,
    id: String,
    kind: String,
    payload: String,
    client: String,
    origin: Vec<(String, String)>,
    trace_url: String,
    logs_url: String,
    trace_id: String,
    live: JobLive,
}

/// The job `s` may see, or the answer that it may not.
async fn visible(state: &AppState, s: &Session, id: &str) -> Result<JobRow, Response> {
    let missing = || (StatusCode::NOT_FOUND, "no such job").into_response();
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    let row = store::get(&state.db, id)
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response())?
        .ok_or_else(missing)?;
    match s.caller.only_own() {
        Some(own) if row.client.as_deref() != Some(own) => Err(missing()),
        _ => Ok(row),
    }
}

async fn live(state: &AppState, s: &Session, j: &JobRow) -> JobLive {
    let held = if j.status.is_final() {
        None
    } else {
        store::held(&state.db, j.id).await.ok().flatten()
    };
    let paused = store::flow::paused(&state.db)
        .await
        .map(|p| p.iter().any(|(k, _)| *k == j.kind))
        .unwrap_or(false);
    let dependencies = store::read::waiting_on(&state.db, j.id).await.unwrap_or(0);
    let facts = Facts {
        status: Some(j.status),
        run_at: Some(j.run_at),
        paused,
        held: held.as_deref(),
        key: j.concurrency_key.as_deref(),
        dependencies,
        broker_up: state.broker.status.is_up(),
        attempts: j.attempts,
    };
    let mut timeline = vec![Moment {
        at: time(j.created_at),
        what: "accepted".into(),
    }];
    for past in j.history.iter() {
        timeline.push(Moment {
            at: past.finished_at.map(time).unwrap_or_default(),
            what: format!(
                "generation {} ended {} after {} attempt(s){}; re-driven",
                past.generation,
                past.status,
                past.attempts,
                past.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    if let Some(at) = j.started_at {
        timeline.push(Moment {
            at: time(at),
            what: "first attempt started".into(),
        });
    }
    if let (Some(at), Some(attempt)) = (j.checkpoint_at, j.checkpoint_attempt) {
        timeline.push(Moment {
            at: time(at),
            what: format!("checkpoint saved by attempt {attempt}"),
        });
    }
    if let Some(at) = j.heartbeat_at.filter(|_| j.status == Status::Running) {
        timeline.push(Moment {
            at: time(at),
            what: "last sign of life from its worker".into(),
        });
    }
    if let Some(at) = j.finished_at {
        timeline.push(Moment {
            at: time(at),
            what: j.status.to_string(),
        });
    }
    JobLive {
        id: j.id.to_string(),
        done: j.status.is_final(),
        status: j.status.to_string(),
        progress: format!("{:.0}%", j.progress * 100.0),
        progress_pct: (j.progress.clamp(0.0, 1.0) * 100.0) as u32,
        attempts: format!(
            "{} attempt(s), {} snooze(s), generation {}",
            (j.attempts - j.snoozes).max(0),
            j.snoozes,
            j.generation
        ),
        why: why::reason(&facts, Utc::now()),
        result: j
            .result
            .as_ref()
            .map(|r| serde_json::to_string_pretty(r).unwrap_or_default()),
        error: j.error.clone(),
        timeline,
        operates: s.may(Access::Operate),
        cancellable: !j.status.is_final(),
        redrivable: matches!(j.status, Status::Failed | Status::Cancelled),
        csrf: s.csrf.clone(),
    }
}

/// One job: its timeline, payload, result or error, why it waits, links, actions by role.
pub(super) async fn job(
    State(state): State<AppState>,
    s: Session,
    Path(id): Path<String>,
) -> Response {
    let j = match visible(&state, &s, &id).await {
        Ok(j) => j,
        Err(res) => return res,
    };
    let links = &state.config.console;
    let mut origin = Vec::new();
    if let Some(name) = &j.schedule_name {
        origin.push(("schedule".into(), name.clone()));
    }
    if let Some(key) = &j.concurrency_key {
        origin.push(("concurrency key".into(), key.clone()));
    }
    origin.push(("priority".into(), j.priority.to_string()));
    render(&JobPage {
        frame: Frame::new(&s, "jobs"),
        id: j.id.to_string(),
        kind: j.kind.clone(),
        payload: serde_json::to_string_pretty(&j.payload).unwrap_or_default(),
        client: j.client.clone().unwrap_or_else(|| "-".into()),
        origin,
        trace_url: links.trace(&j.trace_id),
        logs_url: links.logs(&j.trace_id),
        trace_id: j.trace_id.clone(),
        live: live(&state, &s, &j).await,
    })
}

/// The live part of a job's page, polled by htmx until the job is final.
pub(super) async fn job_live(
    State(state): State<AppState>,
    s: Session,
    Path(id): Path<String>,
) -> Response {
    match visible(&state, &s, &id).await {
        Ok(j) => render(&live(&state, &s, &j).await),
        Err(res) => res,
    }
}

/// A kind's line on the kinds page.
pub(super) struct KindLine {
    kind: String,
    paused: bool,
    limits: String,
    running: i64,
    held: String,
}

#[derive(Template)]
#[template(path = "kinds.html")]
struct KindsPage {
    frame: Frame,
    kinds: Vec<KindLine>,
}

/// Every kind: limits, pause, what runs and waits; pause and resume for operators.
pub(super) async fn kinds(State(state): State<AppState>, s: Session) -> Response {
    if !s.may(Access::Read) {
        return forbidden(&s);
    }
    let Ok(all) = crate::routes::kinds::status(&state, None).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response();
    };
    let kinds = all
        .into_iter()
        .map(|k| {
            let limits = [
                k.concurrency.map(|c| format!("{c} at once")),
                k.concurrency_per_key.map(|c| format!("{c} per key")),
                k.rate.clone().map(|r| format!("rate {r}")),
                k.rate_per_key.clone().map(|r| format!("rate {r} per key")),
                k.unique_fields.as_ref().map(|_| "unique".to_owned()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            let mut held: Vec<String> = k
                .held
                .iter()
                .map(|(why, n)| format!("{n} ({why})"))
                .collect();
            held.sort();
            KindLine {
                kind: k.kind,
                paused: k.paused_at.is_some(),
                limits: if limits.is_empty() {
                    "none".into()
                } else {
                    limits
                },
                running: k.running,
                held: if held.is_empty() {
                    "0".into()
                } else {
                    held.join(", ")
                },
            }
        })
        .collect();
    render(&KindsPage {
        frame: Frame::new(&s, "kinds"),
        kinds,
    })
}

pub(super) struct ScheduleLine {
    name: String,
    kind: String,
    timing: String,
    enabled: bool,
    next: String,
    declared: bool,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    frame: Frame,
    schedules: Vec<ScheduleLine>,
}

/// Every schedule; pause and resume for operators.
pub(super) async fn schedules(State(state): State<AppState>, s: Session) -> Response {
    if !s.may(Access::Read) {
        return forbidden(&s);
    }
    let Ok(rows) = store::schedules::list(&state.db).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response();
    };
    let schedules = rows
        .into_iter()
        .map(|r| ScheduleLine {
            timing: match (&r.cron, r.interval_secs) {
                (Some(cron), _) => format!("{cron} ({})", r.time_zone),
                (None, Some(secs)) => format!("every {secs}s"),
                _ => "-".into(),
            },
            next: if r.enabled {
                time(r.next_fire_at)
            } else {
                "paused".into()
            },
            name: r.name,
            kind: r.kind,
            enabled: r.enabled,
            declared: r.declared,
        })
        .collect();
    render(&SchedulesPage {
        frame: Frame::new(&s, "schedules"),
        schedules,
    })
}

pub(super) struct WorkflowLine {
    id: String,
    name: String,
    status: String,
    progress: String,
    created: String,
}

#[derive(Template)]
#[template(path = "workflows.html")]
struct WorkflowsPage {
    frame: Frame,
    workflows: Vec<WorkflowLine>,
}

/// The newest workflows (a submitter's own).
pub(super) async fn workflows(State(state): State<AppState>, s: Session) -> Response {
    let Ok(rows) = store::workflows::list(&state.db, None, s.caller.only_own(), 50).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response();
    };
    let workflows = rows
        .into_iter()
        .map(|w| WorkflowLine {
            id: w.id.to_string(),
            name: w.name.unwrap_or_else(|| "-".into()),
            status: w.status,
            progress: format!("{}/{} succeeded", w.succeeded, w.jobs),
            created: ago(w.created_at),
        })
        .collect();
    render(&WorkflowsPage {
        frame: Frame::new(&s, "workflows"),
        workflows,
    })
}

/// A node of a workflow's drawing.
pub(super) struct Node {
    key: String,
    job: String,
    status: String,
    after: String,
}

#[derive(Template)]
#[template(path = "workflow.html")]
struct WorkflowPage {
    frame: Frame,
    id: String,
    name: String,
    status: String,
    /// The DAG in columns: a job's column is one more than its deepest dependency's.
    columns: Vec<Vec<Node>>,
    done: bool,
}

/// A workflow drawn as its DAG, each node in its job's state; live until it ends.
pub(super) async fn workflow(
    State(state): State<AppState>,
    s: Session,
    Path(id): Path<String>,
) -> Response {
    let missing = || (StatusCode::NOT_FOUND, "no such workflow").into_response();
    let Ok(id) = Uuid::parse_str(&id) else {
        return missing();
    };
    let Ok(found) = store::workflows::get(&state.db, id).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response();
    };
    let Some((w, jobs)) = found.filter(|(w, _)| {
        s.caller
            .only_own()
            .is_none_or(|own| w.client.as_deref() == Some(own))
    }) else {
        return missing();
    };
    let mut depth: HashMap<String, usize> = HashMap::new();
    // Jobs come dependencies first (by creation), so each one's dependencies have a depth.
    for j in &jobs {
        let d = j
            .depends_on
            .iter()
            .filter_map(|k| depth.get(k))
            .max()
            .map_or(0, |d| d + 1);
        depth.insert(j.workflow_key.clone(), d);
    }
    let mut columns: Vec<Vec<Node>> = Vec::new();
    for j in jobs {
        let d = depth[&j.workflow_key];
        if columns.len() <= d {
            columns.resize_with(d + 1, Vec::new);
        }
        columns[d].push(Node {
            after: j.depends_on.join(", "),
            key: j.workflow_key,
            job: j.job.id.to_string(),
            status: j.job.status.to_string(),
        });
    }
    render(&WorkflowPage {
        frame: Frame::new(&s, "workflows"),
        id: w.id.to_string(),
        name: w.name.unwrap_or_else(|| "-".into()),
        done: w.status != "running",
        status: w.status,
        columns,
    })
}

pub(super) struct AuditLine {
    at: String,
    actor: String,
    role: String,
    action: String,
    target: String,
    jobs: usize,
    trace_url: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<AuditLine>,
}

/// The audit trail's newest entries.
pub(super) async fn audit(State(state): State<AppState>, s: Session) -> Response {
    if !s.may(Access::Read) {
        return forbidden(&s);
    }
    let Ok(rows) = store::audit::list(&state.db, None, None, None, 200).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "PostgreSQL unavailable").into_response();
    };
    let links: &Links = &state.config.console;
    let entries = rows
        .into_iter()
        .map(|r| AuditLine {
            at: time(r.at),
            trace_url: links.trace(&r.trace_id),
            actor: r.actor,
            role: r.role,
            action: r.action,
            target: r.target,
            jobs: r.jobs.len(),
        })
        .collect();
    render(&AuditPage {
        frame: Frame::new(&s, "audit"),
        entries,
    })
}

//! `otlp-sink`: a stand-in OTLP/HTTP receiver for benchmarks. It accepts `POST /v1/traces`
//! (http/protobuf), counts requests, bytes and spans per service, and answers 200 at once, so
//! the services pay the full cost of exporting without a real collector's CPU in the way.
//! `GET /stats` returns the counts as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use serde::Serialize;

/// Accept OTLP/HTTP trace exports and count them.
#[derive(Debug, Parser)]
#[command(name = "otlp-sink", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4318")]
    listen: SocketAddr,
}

#[derive(Debug, Default, Serialize)]
struct Counts {
    requests: u64,
    bytes: u64,
    undecodable: u64,
    spans: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Counts>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Shared::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/stats", get(stats))
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("otlp-sink: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop())
        .await?;
    let c = counts.lock().expect("not poisoned");
    eprintln!("otlp-sink: {}", serde_json::to_string(&*c)?);
    Ok(())
}

async fn traces(
    State(counts): State<Shared>,
    body: Bytes,
) -> ([(axum::http::HeaderName, &'static str); 1], Vec<u8>) {
    let decoded = ExportTraceServiceRequest::decode(body.as_ref());
    let mut c = counts.lock().expect("not poisoned");
    c.requests += 1;
    c.bytes += body.len() as u64;
    match decoded {
        Ok(req) => {
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "unknown".into());
                let n: usize = rs.scope_spans.iter().map(|s| s.spans.len()).sum();
                *c.spans.entry(service).or_default() += n as u64;
            }
        }
        Err(_) => c.undecodable += 1,
    }
    // An empty ExportTraceServiceResponse: full success.
    ([(CONTENT_TYPE, "application/x-protobuf")], Vec::new())
}

async fn stats(State(counts): State<Shared>) -> String {
    serde_json::to_string(&*counts.lock().expect("not poisoned")).expect("serializable")
}

async fn stop() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! A local OTLP trace receiver, over gRPC or HTTP/protobuf, that keeps what it is sent.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use tokio::net::TcpListener;

/// One resource's attributes and the names of its spans.
pub type ResourceSpans = (Vec<(String, String)>, Vec<String>);

/// Requests received so far.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Received {
    /// Everything received, spans with every attribute and event, as text: for looking for what
    /// must never be exported (a secret).
    pub fn text(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }

    /// (resource attributes, span names) per resource.
    pub fn resources(&self) -> Vec<ResourceSpans> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let attrs = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(AnyValue::StringValue(s)) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                let names = rs
                    .scope_spans
                    .iter()
                    .flat_map(|s| &s.spans)
                    .map(|s| s.name.clone())
                    .collect();
                out.push((attrs, names));
            }
        }
        out
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a receiver; returns its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it gets.
pub async fn receiver(protocol: &str) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let sink = received.clone();
    match protocol {
        "grpc" => {
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(sink))
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
            );
        }
        "http/protobuf" => {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: Bytes| async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                    sink.0.lock().unwrap().push(req);
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        other => panic!("unknown protocol {other}"),
    }
    (endpoint, received)
}

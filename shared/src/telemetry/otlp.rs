//! The tracer provider: sampler, resource and (when configured) the OTLP batch exporter, all
//! from the standard `OTEL_*` variables.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use super::Settings;
use crate::config::{self, ConfigError};

/// The OTLP transport, `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc` (port 4317), the default.
    Grpc,
    /// `http/protobuf` (port 4318).
    HttpProtobuf,
}

/// Export settings; present only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#[derive(Debug, Clone)]
pub struct Export {
    /// The collector, e.g. `http://jaeger:4317`.
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
}

impl Export {
    pub(super) fn from_env() -> Result<Option<Self>, ConfigError> {
        // Checked even when nothing is exported, so a typo shows before it matters.
        let protocol = match config::string("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").as_str() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(ConfigError {
                    var: "OTEL_EXPORTER_OTLP_PROTOCOL",
                    value: other.to_owned(),
                    reason: "expected grpc or http/protobuf".into(),
                });
            }
        };
        let endpoint = config::string("OTEL_EXPORTER_OTLP_ENDPOINT", "");
        if endpoint.is_empty() {
            return Ok(None);
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError {
                var: "OTEL_EXPORTER_OTLP_ENDPOINT",
                value: endpoint,
                reason: "expected an http:// or https:// URL".into(),
            });
        }
        Ok(Some(Self { endpoint, protocol }))
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio`
    Ratio(f64),
    /// `parentbased_always_on` (the default)
    ParentBasedOn,
    /// `parentbased_always_off`
    ParentBasedOff,
    /// `parentbased_traceidratio`
    ParentBasedRatio(f64),
}

impl SamplerSetting {
    pub(super) fn from_env() -> Result<Self, ConfigError> {
        let ratio = || config::ranged("OTEL_TRACES_SAMPLER_ARG", 1.0, 0.0, 1.0);
        Ok(
            match config::string("OTEL_TRACES_SAMPLER", "parentbased_always_on").as_str() {
                "always_on" => Self::AlwaysOn,
                "always_off" => Self::AlwaysOff,
                "traceidratio" => Self::Ratio(ratio()?),
                "parentbased_always_on" => Self::ParentBasedOn,
                "parentbased_always_off" => Self::ParentBasedOff,
                "parentbased_traceidratio" => Self::ParentBasedRatio(ratio()?),
                other => {
                    return Err(ConfigError {
                        var: "OTEL_TRACES_SAMPLER",
                        value: other.to_owned(),
                        reason: "expected always_on, always_off, traceidratio or parentbased_*"
                            .into(),
                    });
                }
            },
        )
    }

    fn sampler(&self) -> Sampler {
        let parent = |s| Sampler::ParentBased(Box::new(s));
        match *self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedOn => parent(Sampler::AlwaysOn),
            Self::ParentBasedOff => parent(Sampler::AlwaysOff),
            Self::ParentBasedRatio(r) => parent(Sampler::TraceIdRatioBased(r)),
        }
    }
}

pub(super) fn provider(settings: &Settings) -> anyhow::Result<SdkTracerProvider> {
    // The default detectors read OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; naming the
    // service in code would override the variable, so only do it when the variable is unset.
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(settings.service.clone());
    }
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(settings.sampler.sampler())
        .with_resource(resource.build());
    if let Some(export) = &settings.export {
        builder = builder.with_span_processor(batch(export)?);
    }
    Ok(builder.build())
}

fn batch(export: &Export) -> anyhow::Result<BatchSpanProcessor> {
    // A bounded queue and a short timeout: an unreachable collector drops spans, never slows a
    // request, and (with internal logs off) never floods the logs.
    let timeout = Duration::from_secs(3);
    let exporter = match export.protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(export.endpoint.clone())
            .with_timeout(timeout)
            .build()?,
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(format!(
                "{}/v1/traces",
                export.endpoint.trim_end_matches('/')
            ))
            .with_timeout(timeout)
            .build()?,
    };
    // The SDK's defaults (2048 queued spans, batches of 512), which `OTEL_BSP_*` overrides.
    Ok(BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build())
}

//! The SDK's span and metric exporters for one signal's target (gRPC or HTTP/protobuf,
//! with its headers and timeout).

use std::{collections::HashMap, time::Duration};

use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::metrics::Temporality;

use super::{ExportError, env::SignalTarget};
use crate::config::otlp::Protocol;

fn header_map(headers: &[(String, String)]) -> Result<http::HeaderMap, ExportError> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ExportError::Header(format!("{name}: {e}")))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|e| ExportError::Header(format!("{name}: {e}")))?;
        map.insert(name, value);
    }
    Ok(map)
}

pub(super) fn span_exporter(
    t: &SignalTarget,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let built = match t.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(t.endpoint.clone())
            .with_timeout(timeout)
            .with_metadata(
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(header_map(
                    &t.headers,
                )?),
            )
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(t.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(t.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build(),
    };
    built.map_err(|source| ExportError::Build {
        signal: "traces",
        endpoint: t.endpoint.clone(),
        source,
    })
}

pub(super) fn metric_exporter(
    t: &SignalTarget,
    timeout: Duration,
) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
    let built = match t.protocol {
        Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(t.endpoint.clone())
            .with_timeout(timeout)
            .with_metadata(
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(header_map(
                    &t.headers,
                )?),
            )
            .with_temporality(Temporality::Cumulative)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(t.endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(t.headers.iter().cloned().collect::<HashMap<_, _>>())
            .with_temporality(Temporality::Cumulative)
            .build(),
    };
    built.map_err(|source| ExportError::Build {
        signal: "metrics",
        endpoint: t.endpoint.clone(),
        source,
    })
}

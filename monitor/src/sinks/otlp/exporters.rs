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

/// `fn $name(target, timeout)`: the `$exporter` for the target's protocol, endpoint,
/// headers and `timeout`, with `$finish` (e.g. the temporality) on either transport.
/// A macro: the two builders and their transport stages share methods, not traits.
macro_rules! exporter {
    ($name:ident -> $exporter:ty, $signal:literal, |$b:ident| $finish:expr) => {
        pub(super) fn $name(t: &SignalTarget, timeout: Duration) -> Result<$exporter, ExportError> {
            let built = match t.protocol {
                Protocol::Grpc => {
                    let $b = <$exporter>::builder()
                        .with_tonic()
                        .with_endpoint(t.endpoint.clone())
                        .with_timeout(timeout)
                        .with_metadata(
                            opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                                header_map(&t.headers)?,
                            ),
                        );
                    $finish.build()
                }
                Protocol::HttpProtobuf => {
                    let $b = <$exporter>::builder()
                        .with_http()
                        .with_endpoint(t.endpoint.clone())
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_timeout(timeout)
                        .with_headers(t.headers.iter().cloned().collect::<HashMap<_, _>>());
                    $finish.build()
                }
            };
            built.map_err(|source| ExportError::Build {
                signal: $signal,
                endpoint: t.endpoint.clone(),
                source,
            })
        }
    };
}

exporter!(span_exporter -> opentelemetry_otlp::SpanExporter, "traces", |b| b);
exporter!(metric_exporter -> opentelemetry_otlp::MetricExporter, "metrics", |b| {
    b.with_temporality(Temporality::Cumulative)
});

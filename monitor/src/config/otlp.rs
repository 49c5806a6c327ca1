//! The `[otlp]` section: where and how the OTLP exporter (`sinks::otlp`) sends spans and
//! metrics. The standard OpenTelemetry environment variables are merged in by the
//! exporter (`sinks::otlp::env`).
//!
//! ```toml
//! [otlp]
//! endpoint = "http://collector:4318"    # none: OTEL_EXPORTER_OTLP_*ENDPOINT, or export is off
//! protocol = "http/protobuf"            # or "grpc"; default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf
//! headers = { "x-api-key" = "secret" }  # merged over OTEL_EXPORTER_OTLP_HEADERS
//! success_sample_ratio = 0.0            # share of successful connects exported as spans
//! span_queue_size = 4096                # spans waiting for export; the newest are dropped when full
//! span_batch_size = 512
//! span_flush_interval = "1s"
//! export_interval = "10s"               # metrics
//! export_timeout = "5s"
//! shutdown_timeout = "3s"
//! ```

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr};

use crate::{
    invalid::Invalid,
    policy::config::{format_duration, human_duration},
};

/// How spans and metrics travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, EnumString)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    #[strum(serialize = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    #[strum(serialize = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        s.trim().parse().ok()
    }
}

/// The `[otlp]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector base URL (`http://host:4318` for HTTP, `http://host:4317` for gRPC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Share of successful connects exported as `tcp.connect` spans (failures always are).
    pub success_sample_ratio: f64,
    /// Finished spans waiting for export; when full, new spans are dropped and counted.
    pub span_queue_size: usize,
    /// Spans per export request.
    pub span_batch_size: usize,
    /// How often queued spans are exported when a batch is not full.
    #[serde(with = "human_duration")]
    pub span_flush_interval: Duration,
    /// How often metrics are collected and exported.
    #[serde(with = "human_duration")]
    pub export_interval: Duration,
    /// Limit on one export request, retries included.
    #[serde(with = "human_duration")]
    pub export_timeout: Duration,
    /// Limit on the final flush at exit.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            success_sample_ratio: 0.0,
            span_queue_size: 4096,
            span_batch_size: 512,
            span_flush_interval: Duration::from_secs(1),
            export_interval: Duration::from_secs(10),
            export_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(3),
        }
    }
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Invalid {
    Invalid::new(key, value, allowed)
}

/// The upper bound of `shutdown_timeout`: the agent gives its consumers 5 s in all.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

impl OtlpConfig {
    /// Checks every value (the endpoint and headers again at start-up, with the environment).
    pub fn validate(&self) -> Result<(), Invalid> {
        let r = self.success_sample_ratio;
        if !(0.0..=1.0).contains(&r) {
            return Err(invalid(
                "otlp.success_sample_ratio",
                r,
                "must be between 0 and 1",
            ));
        }
        if self.span_queue_size == 0 || self.span_queue_size > 1 << 20 {
            return Err(invalid(
                "otlp.span_queue_size",
                self.span_queue_size,
                "must be between 1 and 1048576",
            ));
        }
        if self.span_batch_size == 0 || self.span_batch_size > self.span_queue_size {
            return Err(invalid(
                "otlp.span_batch_size",
                self.span_batch_size,
                "must be between 1 and otlp.span_queue_size",
            ));
        }
        let between = |key: &str, d: Duration, min: Duration, max: Duration, allowed: &str| {
            if d < min || d > max {
                Err(invalid(key, format_duration(d), allowed))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        between(
            "otlp.span_flush_interval",
            self.span_flush_interval,
            ms(10),
            ms(60_000),
            "must be between 10ms and 60s",
        )?;
        between(
            "otlp.export_interval",
            self.export_interval,
            ms(100),
            ms(3_600_000),
            "must be between 100ms and 1h",
        )?;
        between(
            "otlp.export_timeout",
            self.export_timeout,
            ms(100),
            ms(60_000),
            "must be between 100ms and 60s",
        )?;
        between(
            "otlp.shutdown_timeout",
            self.shutdown_timeout,
            ms(100),
            MAX_SHUTDOWN_TIMEOUT,
            "must be between 100ms and 4s",
        )?;
        if let Some(endpoint) = &self.endpoint {
            check_endpoint("otlp.endpoint", endpoint)?;
        }
        for (name, value) in &self.headers {
            check_header("otlp.headers", name, value)?;
        }
        Ok(())
    }
}

pub(crate) fn check_endpoint(key: &str, url: &str) -> Result<(), Invalid> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Err(invalid(
            key,
            url,
            "TLS is not built in: use http:// to a collector on this host or network",
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(invalid(
            key,
            url,
            "must be an http:// URL, e.g. http://127.0.0.1:4318",
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(invalid(
            key,
            url,
            "must name a host, e.g. http://127.0.0.1:4318",
        ));
    }
    Ok(())
}

pub(crate) fn check_header(key: &str, name: &str, value: &str) -> Result<(), Invalid> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(invalid(key, name, "is not a valid header name"));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(invalid(
            key,
            format!("{name}: {value:?}"),
            "header values must be visible ASCII",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_section_parses_and_round_trips() {
        let text = "endpoint = \"http://c:4317\"\nprotocol = \"grpc\"\nsuccess_sample_ratio = 0.25\nexport_interval = \"2s\"\n[headers]\nx-api-key = \"k\"\n";
        let config: OtlpConfig = toml::from_str(text).unwrap();
        assert_eq!(config.protocol, Some(Protocol::Grpc));
        assert_eq!(config.export_interval, Duration::from_secs(2));
        assert_eq!(
            config.headers.get("x-api-key").map(String::as_str),
            Some("k")
        );
        config.validate().unwrap();
        let again: OtlpConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        assert!(toml::from_str::<OtlpConfig>("protocol = \"http/json\"\n").is_err());
    }
}

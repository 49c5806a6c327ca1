//! The `[otlp]` section and the standard OpenTelemetry environment variables, resolved
//! into what each signal is exported to.
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
//!
//! Precedence, highest first: `--otlp-endpoint`, the config file, the per-signal variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used verbatim), the generic variable
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`; `/v1/traces` and `/v1/metrics` are appended for
//! HTTP). A signal with no endpoint from any of these is not exported; with neither, the
//! exporter does not start. The environment is passed in as a lookup function so that
//! resolution is a pure, unit-tested function.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::policy::config::{format_duration, human_duration};

/// How spans and metrics travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
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

/// A bad `[otlp]` value or OpenTelemetry environment variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OtlpConfigError {
    #[error("{key} = {value}: {allowed}")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
}

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> OtlpConfigError {
    OtlpConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.to_owned(),
    }
}

/// The upper bound of `shutdown_timeout`: the agent gives its consumers 5 s in all.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

impl OtlpConfig {
    /// Checks every value (the endpoint and headers again at start-up, with the environment).
    pub fn validate(&self) -> Result<(), OtlpConfigError> {
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

/// Where one signal goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalTarget {
    /// The full URL: for HTTP including `/v1/traces` or `/v1/metrics`.
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sorted by name.
    pub headers: Vec<(String, String)>,
}

/// The export plan: each signal's target, or `None` when it is not exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTargets {
    pub traces: Option<SignalTarget>,
    pub metrics: Option<SignalTarget>,
}

/// The two signals and their variable infixes and HTTP paths.
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn var(self, suffix: &str) -> String {
        let infix = match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        };
        format!("OTEL_EXPORTER_OTLP_{infix}_{suffix}")
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }
}

/// An environment lookup: empty values count as unset, as the specification says.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Resolves the export plan from the config (flags already applied) and the environment.
/// `Ok(None)`: export is off (no endpoint anywhere, or `OTEL_SDK_DISABLED=true`).
pub fn resolve(
    config: &OtlpConfig,
    env: Env<'_>,
) -> Result<Option<ExportTargets>, OtlpConfigError> {
    if var(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let targets = ExportTargets {
        traces: resolve_signal(config, env, Signal::Traces)?,
        metrics: resolve_signal(config, env, Signal::Metrics)?,
    };
    Ok((targets.traces.is_some() || targets.metrics.is_some()).then_some(targets))
}

fn resolve_signal(
    config: &OtlpConfig,
    env: Env<'_>,
    signal: Signal,
) -> Result<Option<SignalTarget>, OtlpConfigError> {
    let protocol = match config.protocol {
        Some(p) => p,
        None => {
            let signal_var = signal.var("PROTOCOL");
            let named = var(env, &signal_var).map(|v| (signal_var, v)).or_else(|| {
                var(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
                    .map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), v))
            });
            match named {
                Some((name, value)) => Protocol::parse(&value).ok_or_else(|| {
                    invalid(
                        &name,
                        &value,
                        "must be grpc or http/protobuf (http/json is not supported)",
                    )
                })?,
                None => Protocol::HttpProtobuf,
            }
        }
    };
    let signal_var = signal.var("ENDPOINT");
    let endpoint = if let Some(base) = &config.endpoint {
        check_endpoint("otlp.endpoint", base)?;
        signal_url(base, protocol, signal)
    } else if let Some(url) = var(env, &signal_var) {
        check_endpoint(&signal_var, &url)?;
        url.trim().to_owned()
    } else if let Some(base) = var(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
        check_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?;
        signal_url(&base, protocol, signal)
    } else {
        return Ok(None);
    };
    let mut headers = BTreeMap::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
        signal.var("HEADERS"),
    ] {
        if let Some(value) = var(env, &name) {
            headers.extend(parse_key_values(&name, &value)?);
        }
    }
    for (name, value) in &config.headers {
        headers.insert(name.to_ascii_lowercase(), value.clone());
    }
    for (name, value) in &headers {
        check_header("otlp.headers", name, value)?;
    }
    Ok(Some(SignalTarget {
        endpoint,
        protocol,
        headers: headers.into_iter().collect(),
    }))
}

/// A base URL as one signal's URL: gRPC uses it as is; HTTP appends the signal's path.
fn signal_url(base: &str, protocol: Protocol, signal: Signal) -> String {
    let base = base.trim();
    match protocol {
        Protocol::Grpc => base.to_owned(),
        Protocol::HttpProtobuf => format!("{}/{}", base.trim_end_matches('/'), signal.http_path()),
    }
}

fn check_endpoint(key: &str, url: &str) -> Result<(), OtlpConfigError> {
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

fn check_header(key: &str, name: &str, value: &str) -> Result<(), OtlpConfigError> {
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

/// Parses `key1=value1,key2=value2` (W3C Baggage-like, values percent-decoded), the
/// format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn parse_key_values(name: &str, value: &str) -> Result<Vec<(String, String)>, OtlpConfigError> {
    let mut out = Vec::new();
    for item in value.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(
                name,
                value,
                "must be a comma-separated list of key=value",
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(invalid(
                name,
                value,
                "must be a comma-separated list of key=value (a key is empty)",
            ));
        }
        let decoded =
            percent_decode(v).ok_or_else(|| invalid(name, value, "has a bad %-escape"))?;
        out.push((k.to_owned(), decoded));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // Two hex digits: from_str_radix alone would also take a sign ("%+f").
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the host tells about itself, for the resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostIdentity {
    pub name: Option<String>,
    /// `/etc/machine-id`.
    pub id: Option<String>,
}

impl HostIdentity {
    pub fn detect() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        HostIdentity {
            name: read("/proc/sys/kernel/hostname"),
            id: read("/etc/machine-id"),
        }
    }
}

/// The resource attributes, lowest precedence first: connmon's own (`service.name`,
/// `service.version`, `host.name`, `host.id`), then `OTEL_RESOURCE_ATTRIBUTES`, then
/// `OTEL_SERVICE_NAME`.
pub fn resource_attributes(
    env: Env<'_>,
    host: &HostIdentity,
) -> Result<Vec<(String, String)>, OtlpConfigError> {
    let mut attrs = BTreeMap::new();
    attrs.insert("service.name".to_owned(), "connmon".to_owned());
    attrs.insert(
        "service.version".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    );
    if let Some(name) = &host.name {
        attrs.insert("host.name".to_owned(), name.clone());
    }
    if let Some(id) = &host.id {
        attrs.insert("host.id".to_owned(), id.clone());
    }
    if let Some(value) = var(env, "OTEL_RESOURCE_ATTRIBUTES") {
        attrs.extend(parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &value)?);
    }
    if let Some(name) = var(env, "OTEL_SERVICE_NAME") {
        attrs.insert("service.name".to_owned(), name.trim().to_owned());
    }
    Ok(attrs.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn with_endpoint(endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            endpoint: Some(endpoint.to_owned()),
            ..OtlpConfig::default()
        }
    }

    #[test]
    fn off_without_any_endpoint_or_when_disabled() {
        assert_eq!(resolve(&OtlpConfig::default(), &env_of(&[])).unwrap(), None);
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert_eq!(resolve(&OtlpConfig::default(), &env).unwrap(), None);
        // An empty variable is unset.
        assert_eq!(
            resolve(
                &OtlpConfig::default(),
                &env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn generic_http_endpoint_gets_signal_paths_and_grpc_is_verbatim() {
        let t = resolve(&with_endpoint("http://c:4318/"), &env_of(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(t.traces.unwrap().endpoint, "http://c:4318/v1/traces");
        assert_eq!(
            t.metrics.as_ref().unwrap().endpoint,
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            t.metrics.unwrap().protocol,
            Protocol::HttpProtobuf,
            "the specification's default"
        );
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let t = resolve(&OtlpConfig::default(), &env).unwrap().unwrap();
        assert_eq!(t.traces.as_ref().unwrap().endpoint, "http://c:4317");
        assert_eq!(t.traces.unwrap().protocol, Protocol::Grpc);
    }

    #[test]
    fn per_signal_variables_override_generic_ones_and_stand_alone() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ]);
        let t = resolve(&OtlpConfig::default(), &env).unwrap().unwrap();
        assert_eq!(
            t.traces.as_ref().unwrap().endpoint,
            "http://traces:9999/custom"
        );
        assert_eq!(t.traces.unwrap().protocol, Protocol::HttpProtobuf);
        let m = t.metrics.unwrap();
        assert_eq!(
            (m.endpoint.as_str(), m.protocol),
            ("http://generic:4318", Protocol::Grpc)
        );
        // Only the traces variable: metrics are not exported.
        let env = env_of(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://t:4318/v1/traces",
        )]);
        let t = resolve(&OtlpConfig::default(), &env).unwrap().unwrap();
        assert!(t.traces.is_some() && t.metrics.is_none());
    }

    #[test]
    fn flag_and_file_win_over_the_environment() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let config = OtlpConfig {
            protocol: Some(Protocol::Grpc),
            ..with_endpoint("http://flag:4317")
        };
        let t = resolve(&config, &env).unwrap().unwrap();
        assert_eq!(t.traces.unwrap().endpoint, "http://flag:4317");
        assert_eq!(t.metrics.unwrap().protocol, Protocol::Grpc);
    }

    #[test]
    fn headers_merge_generic_then_signal_then_file() {
        let env = env_of(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=generic,x-tenant=a%20b",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=traces"),
        ]);
        let mut config = with_endpoint("http://c:4318");
        config.headers.insert("X-Team".into(), "net".into());
        let t = resolve(&config, &env).unwrap().unwrap();
        let pairs = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            pairs(&t.traces.unwrap().headers),
            "api-key=traces,x-team=net,x-tenant=a b"
        );
        assert_eq!(
            pairs(&t.metrics.unwrap().headers),
            "api-key=generic,x-team=net,x-tenant=a b"
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_allowed() {
        let err = |config: &OtlpConfig, env: &[(&str, &str)]| {
            resolve(config, &env_of(env)).unwrap_err().to_string()
        };
        assert_eq!(
            err(
                &with_endpoint("http://c"),
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]
            ),
            "OTEL_EXPORTER_OTLP_PROTOCOL = http/json: must be grpc or http/protobuf (http/json is not supported)"
        );
        assert_eq!(
            err(
                &OtlpConfig::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]
            ),
            "OTEL_EXPORTER_OTLP_ENDPOINT = collector:4317: must be an http:// URL, e.g. http://127.0.0.1:4318"
        );
        assert!(err(&with_endpoint("https://c:4318"), &[]).contains("TLS is not built in"));
        assert_eq!(
            err(
                &with_endpoint("http://c"),
                &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]
            ),
            "OTEL_EXPORTER_OTLP_HEADERS = novalue: must be a comma-separated list of key=value"
        );
        let config = OtlpConfig {
            success_sample_ratio: 1.5,
            ..OtlpConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "otlp.success_sample_ratio = 1.5: must be between 0 and 1"
        );
        let config = OtlpConfig {
            shutdown_timeout: Duration::from_secs(10),
            ..OtlpConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "otlp.shutdown_timeout = 10s: must be between 100ms and 4s"
        );
        let mut config = with_endpoint("http://c:4318");
        config.headers.insert("bad header".into(), "v".into());
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "otlp.headers = bad header: is not a valid header name"
        );
    }

    #[test]
    fn resource_defaults_then_resource_attributes_then_service_name() {
        let host = HostIdentity {
            name: Some("scraper-1".into()),
            id: Some("abc123".into()),
        };
        let attrs = resource_attributes(&env_of(&[]), &host).unwrap();
        let get = |attrs: &[(String, String)], k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(&attrs, "service.name").as_deref(), Some("connmon"));
        assert_eq!(
            get(&attrs, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(get(&attrs, "host.name").as_deref(), Some("scraper-1"));
        assert_eq!(get(&attrs, "host.id").as_deref(), Some("abc123"));
        let env = env_of(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs,deployment.environment=prod%2Feu",
        )]);
        let attrs = resource_attributes(&env, &HostIdentity::default()).unwrap();
        assert_eq!(get(&attrs, "service.name").as_deref(), Some("from-attrs"));
        assert_eq!(
            get(&attrs, "deployment.environment").as_deref(),
            Some("prod/eu")
        );
        assert_eq!(get(&attrs, "host.id"), None);
        let env = env_of(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "edge"),
        ]);
        assert_eq!(
            get(&resource_attributes(&env, &host).unwrap(), "service.name").as_deref(),
            Some("edge")
        );
    }

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

    /// Found while writing the `config_toml` fuzz target: `u8::from_str_radix` accepts a
    /// leading sign, so `%+f` was decoded as 0x0f instead of being refused.
    #[test]
    fn fuzz_regression_a_signed_percent_escape_is_refused() {
        assert_eq!(percent_decode("a%20b"), Some("a b".into()));
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert!(parse_key_values("OTEL_RESOURCE_ATTRIBUTES", "k=%+f").is_err());
    }
}

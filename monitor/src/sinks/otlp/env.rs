//! The standard OpenTelemetry environment variables, merged with the `[otlp]` section
//! into what each signal is exported to, and the resource attributes.
//!
//! Precedence, highest first: `--otlp-endpoint`, the config file, the per-signal variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used verbatim), the generic variable
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`; `/v1/traces` and `/v1/metrics` are appended for
//! HTTP). A signal with no endpoint from any of these is not exported; with neither, the
//! exporter does not start. The environment is passed in as a lookup function so that
//! resolution is a pure, unit-tested function.

use std::collections::BTreeMap;

use crate::{
    config::otlp::{OtlpConfig, Protocol, check_endpoint, check_header},
    invalid::Invalid,
};

fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Invalid {
    Invalid::new(key, value, allowed)
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
pub fn resolve(config: &OtlpConfig, env: Env<'_>) -> Result<Option<ExportTargets>, Invalid> {
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
) -> Result<Option<SignalTarget>, Invalid> {
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

/// Parses `key1=value1,key2=value2` (W3C Baggage-like, values percent-decoded), the
/// format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn parse_key_values(name: &str, value: &str) -> Result<Vec<(String, String)>, Invalid> {
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
) -> Result<Vec<(String, String)>, Invalid> {
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
    use std::{collections::HashMap, time::Duration};

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

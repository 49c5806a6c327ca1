//! The one configuration error: the key, the value it had and what is allowed. Every
//! section's `validate` returns it, with the key spelled as in the file
//! (`policy.failure_ratio`, `checks.max_in_flight`, `haproxy[0].backend`) or as the
//! environment variable it came from (`OTEL_EXPORTER_OTLP_ENDPOINT`).

use std::fmt::Display;

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {allowed}")]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, value: impl Display, allowed: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

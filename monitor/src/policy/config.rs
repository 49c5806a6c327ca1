//! The `[policy]` section of connmon.toml: detector thresholds, ejection timing and the
//! guards, with the defaults of the issue (Envoy's outlier-detection parameters are the
//! model). Durations are human strings ("30s", "10m", "1500ms", "1m30s"); `validate`
//! names the key, the value and what is allowed.

use std::{fmt::Write as _, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    evidence::EvidenceConfig,
    pool::{PoolEntry, PoolMembership},
};
use crate::invalid::Invalid;

/// Detector thresholds, ejection timing and guards.
///
/// A consecutive-failure threshold (or `syn_retransmits`, or `outage_min_destinations`)
/// of 0 turns that detector off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refused connects in a row that eject a destination.
    pub consecutive_refused: u32,
    /// Timeouts, abandoned and unreachable connects in a row that eject a destination.
    pub consecutive_timeouts: u32,
    /// Resets of established connections, with no successful connect between them.
    pub consecutive_resets: u32,
    /// SYN retransmits of one pending connect that eject; the first one makes it a suspect.
    pub syn_retransmits: u32,
    /// Failure ratio over `ratio_window` that ejects ...
    pub failure_ratio: f64,
    #[serde(with = "human_duration")]
    pub ratio_window: Duration,
    /// ... once the window holds at least this many attempts.
    pub ratio_min_attempts: u32,
    /// First ejection; doubled for every further one ...
    #[serde(with = "human_duration")]
    pub base_ejection: Duration,
    /// ... up to this.
    #[serde(with = "human_duration")]
    pub max_ejection: Duration,
    /// Random extra ejection time, as a fraction of the duration (0.1 = up to 10 %).
    pub jitter: f64,
    /// Most pool members ejected at once, in percent (at least one; 0 = no automatic ejection).
    pub max_ejection_percent: u32,
    /// A local outage: at least this many destinations attempted in `outage_window` ...
    pub outage_min_destinations: u32,
    /// ... of which at least this fraction failing.
    pub outage_failure_ratio: f64,
    #[serde(with = "human_duration")]
    pub outage_window: Duration,
    /// Bound of the destination table.
    pub max_destinations: usize,
    /// Also eject destinations outside the pool.
    pub evict_targets: bool,
    /// Pool members, in the same syntax as a `--pool` file line.
    pub pool: Vec<String>,
    /// `[policy.evidence]`: which connects may move a verdict (see `policy::evidence`).
    pub evidence: EvidenceConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            consecutive_refused: 1,
            consecutive_timeouts: 3,
            consecutive_resets: 5,
            syn_retransmits: 2,
            failure_ratio: 0.8,
            ratio_window: Duration::from_secs(60),
            ratio_min_attempts: 20,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(600),
            jitter: 0.10,
            max_ejection_percent: 50,
            outage_min_destinations: 5,
            outage_failure_ratio: 0.8,
            outage_window: Duration::from_secs(10),
            max_destinations: 100_000,
            evict_targets: false,
            pool: Vec::new(),
            evidence: EvidenceConfig::default(),
        }
    }
}

/// An invalid `[policy]` value (`key` without the `policy.` prefix).
fn invalid(key: &str, value: impl std::fmt::Display, allowed: impl Into<String>) -> Invalid {
    Invalid::new(format!("policy.{key}"), value, allowed)
}

fn ratio_in_unit_interval(key: &str, value: f64) -> Result<(), Invalid> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            value,
            "must be between 0 and 1 (greater than 0)",
        ))
    }
}

fn positive(key: &str, value: Duration) -> Result<(), Invalid> {
    if value.is_zero() {
        Err(invalid(
            key,
            format_duration(value),
            "must be greater than 0s",
        ))
    } else {
        Ok(())
    }
}

impl PolicyConfig {
    /// Checks every value; the first bad one is the error.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.check().map(drop)
    }

    fn validate_without_pool(&self) -> Result<(), Invalid> {
        ratio_in_unit_interval("failure_ratio", self.failure_ratio)?;
        positive("ratio_window", self.ratio_window)?;
        if self.ratio_min_attempts == 0 {
            return Err(invalid("ratio_min_attempts", 0, "must be at least 1"));
        }
        positive("base_ejection", self.base_ejection)?;
        if self.max_ejection < self.base_ejection {
            return Err(invalid(
                "max_ejection",
                format_duration(self.max_ejection),
                format!(
                    "must be at least policy.base_ejection ({})",
                    format_duration(self.base_ejection)
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(invalid("jitter", self.jitter, "must be between 0 and 1"));
        }
        if self.max_ejection_percent > 100 {
            return Err(invalid(
                "max_ejection_percent",
                self.max_ejection_percent,
                "must be between 0 and 100",
            ));
        }
        ratio_in_unit_interval("outage_failure_ratio", self.outage_failure_ratio)?;
        positive("outage_window", self.outage_window)?;
        if self.max_destinations == 0 {
            return Err(invalid("max_destinations", 0, "must be at least 1"));
        }
        self.evidence.validate()
    }

    /// Checks every value and returns the `pool` entries, parsed (once).
    pub fn check(&self) -> Result<Vec<PoolEntry>, Invalid> {
        self.validate_without_pool()?;
        self.pool_entries()
    }

    /// The `pool` entries, parsed.
    pub fn pool_entries(&self) -> Result<Vec<PoolEntry>, Invalid> {
        self.pool
            .iter()
            .enumerate()
            .map(|(i, text)| {
                PoolMembership::parse_entry(text)
                    .map_err(|e| invalid(&format!("pool[{i}]"), format!("{text:?}"), e.to_string()))
            })
            .collect()
    }
}

/// Formats a duration the way the config file writes it: "10m", "30s", "1500ms".
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, name) in UNITS {
        if nanos.is_multiple_of(unit) {
            let _ = write!(out, "{}{name}", nanos / unit);
            break;
        }
    }
    out
}

/// Parses "30s", "10m", "1500ms", "1h30m", "250us"; a bare number is rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: expected a number"));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale: u128 = match &rest[..unit_len] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (h, m, s, ms, us, ns)"
                ));
            }
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(scale)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("invalid duration {text:?}: too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Serde adapter for durations written as human strings.
pub mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        policy: PolicyConfig,
    }

    fn parse(toml_text: &str) -> Result<PolicyConfig, toml::de::Error> {
        toml::from_str::<File>(toml_text).map(|f| f.policy)
    }

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let config = PolicyConfig::default();
        assert_eq!(config.validate(), Ok(()));
        let text = toml::to_string(&config).expect("serialize");
        assert!(text.contains("base_ejection = \"30s\""), "{text}");
        assert!(text.contains("max_ejection = \"10m\""), "{text}");
        let back: PolicyConfig = toml::from_str(&text).expect("parse back");
        assert_eq!(back, config);
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let config = parse("[policy]\nbase_ejection = \"1500ms\"\npool = [\"10.0.0.1:80\"]\n")
            .expect("parse");
        assert_eq!(config.base_ejection, Duration::from_millis(1500));
        assert_eq!(config.consecutive_timeouts, 3);
        assert_eq!(config.pool_entries().map(|p| p.len()), Ok(1));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected() {
        let err = parse("[policy]\nconsecutive_refuse = 1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse("[policy]\nbase_ejection = \"30\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing unit"), "{err}");
        let err = parse("[policy]\nbase_ejection = \"3 parsecs\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown unit"), "{err}");
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn validation_names_key_value_and_allowed_range() {
        type Mutation = fn(&mut PolicyConfig);
        let cases: [(Mutation, &str); 8] = [
            (
                |c| c.failure_ratio = 1.5,
                "policy.failure_ratio = 1.5: must be between 0 and 1",
            ),
            (
                |c| c.outage_failure_ratio = 0.0,
                "policy.outage_failure_ratio = 0: must be between 0 and 1",
            ),
            (
                |c| c.jitter = -0.1,
                "policy.jitter = -0.1: must be between 0 and 1",
            ),
            (
                |c| c.max_ejection_percent = 101,
                "policy.max_ejection_percent = 101: must be between 0 and 100",
            ),
            (
                |c| c.max_ejection = Duration::from_secs(10),
                "policy.max_ejection = 10s: must be at least policy.base_ejection (30s)",
            ),
            (
                |c| c.ratio_window = Duration::ZERO,
                "policy.ratio_window = 0s: must be greater than 0s",
            ),
            (
                |c| c.max_destinations = 0,
                "policy.max_destinations = 0: must be at least 1",
            ),
            (
                |c| c.pool = vec!["10.0.0.300:80".into()],
                "policy.pool[0] = \"10.0.0.300:80\": ",
            ),
        ];
        for (mutate, want) in cases {
            let mut config = PolicyConfig::default();
            mutate(&mut config);
            let got = config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }
}

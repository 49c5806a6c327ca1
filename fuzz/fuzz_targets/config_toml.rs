//! The configuration file: TOML text → `Config::parse` → `Config::validate` (agent,
//! policy, pool entries, `[[haproxy]]`, `[otlp]`), then what the agent does with a valid
//! one: its `--print-config` rendering must load back to the same configuration, the
//! OTLP targets resolve, and the engine starts with the policy and runs an ejection
//! through its whole back-off (extreme durations and ratios included). After a NUL byte
//! the input is the environment (`NAME=VALUE` lines: the `OTEL_*` variables the export
//! resolves its endpoints, headers and resource attributes from).
#![no_main]

use std::{net::SocketAddr, path::Path};

use connmon_fuzz::Engine;
use libfuzzer_sys::fuzz_target;
use monitor::{
    config::Config,
    policy::PoolMembership,
    server::protocol::Action,
    sinks::otlp::env::{HostIdentity, resolve, resource_attributes},
};

fuzz_target!(|data: &[u8]| {
    let (toml_bytes, env_bytes) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env_text = String::from_utf8_lossy(env_bytes);
    let env_vars: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let env = |name: &str| {
        env_vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let _ = resource_attributes(&env, &HostIdentity::default());
    let Ok(text) = std::str::from_utf8(toml_bytes) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let Ok(config) = Config::parse(path, text) else {
        return;
    };
    if let Err(err) = config.validate() {
        let _ = err.to_string();
        return;
    }
    let printed = config.to_toml();
    let again = Config::parse(path, &printed)
        .unwrap_or_else(|e| panic!("--print-config output does not parse: {e}\n{printed}"));
    again
        .validate()
        .unwrap_or_else(|e| panic!("--print-config output does not validate: {e}\n{printed}"));
    assert_eq!(
        again, config,
        "--print-config does not load back to the same config:\n{printed}"
    );
    let _ = resolve(&config.otlp, &env);
    let entries = config.policy.pool_entries().expect("validated");
    let pool = if entries.is_empty() {
        PoolMembership::unconfigured()
    } else {
        PoolMembership::from_entries(entries)
    };
    let mut engine =
        Engine::new(config.policy.clone(), pool).expect("a validated policy starts the engine");
    let dst = SocketAddr::from(([198, 51, 100, 7], 8080));
    for _ in 0..4 {
        engine.request(
            Action::Evict {
                dst,
                duration: None,
            },
            None,
        );
        engine.advance(u64::MAX / 8);
    }
});

//! The configuration surface of `connmon run`: the effective configuration, and errors
//! that name the key, the value and what is allowed — before anything is loaded.

use std::process::Command;

use connmon_integration::{connmon_bin, scratch_dir};

fn connmon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(connmon_bin())
        .args(args)
        .output()
        .expect("run connmon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn print_config_shows_file_values_overridden_by_flags() {
    let dir = scratch_dir("cfg");
    let path = dir.join("connmon.toml");
    std::fs::write(&path, "[agent]\nring_buffer_bytes = 2097152\nstats_interval = \"30s\"\n[policy]\nbase_ejection = \"45s\"\n").unwrap();
    let (code, out, err) = connmon(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--stats-interval",
        "5s",
        "--print-config",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ring_buffer_bytes = 2097152"), "{out}");
    assert!(out.contains("stats_interval = \"5s\""), "flag wins: {out}");
    assert!(out.contains("base_ejection = \"45s\""), "{out}");
    assert!(
        out.contains("max_ejection_percent = 50"),
        "defaults shown: {out}"
    );
}

#[test]
fn invalid_values_and_unknown_keys_are_named() {
    let dir = scratch_dir("cfgbad");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[policy]\nfailure_ratio = 1.5\n").unwrap();
    let (code, _, err) = connmon(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "connmon: error: policy.failure_ratio = 1.5: must be between 0 and 1 (greater than 0)"
    );

    std::fs::write(&path, "[policy]\nconsecutive_refusd = 2\n").unwrap();
    let (code, _, err) = connmon(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("consecutive_refusd") && err.contains(path.to_str().unwrap()),
        "{err}"
    );

    let (code, _, err) = connmon(&["run", "--config", "/nonexistent/connmon.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read config file /nonexistent/connmon.toml"),
        "{err}"
    );
}

#[test]
fn a_bad_pool_file_names_the_line() {
    let dir = scratch_dir("poolbad");
    let pool = dir.join("pool.txt");
    std::fs::write(&pool, "127.0.0.1:8080\n# comment\n300.1.1.1:80\n").unwrap();
    let (code, _, err) = connmon(&[
        "run",
        "--config",
        "/dev/null",
        "--pool",
        pool.to_str().unwrap(),
        "--state-file",
        dir.join("s.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 3") && err.contains("300.1.1.1:80"),
        "{err}"
    );
}

//! The configuration surface of `connmon run`: the effective configuration, and errors
//! that name the key, the value and what is allowed — before anything is loaded.

use std::process::Command;

use connmon_integration::{connmon_bin, scratch_dir, write_config};

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

/// Runs `connmon`, expects exit status 1 and returns its stderr.
fn connmon_fails(args: &[&str]) -> String {
    let (code, _, err) = connmon(args);
    assert_eq!(code, 1, "{err}");
    err
}

#[test]
fn print_config_shows_file_values_overridden_by_flags() {
    let path = write_config(
        &scratch_dir("cfg"),
        "[agent]\nring_buffer_bytes = 2097152\nstats_interval = \"30s\"\n[policy]\nbase_ejection = \"45s\"\n",
    );
    let (code, out, err) = connmon(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--stats-interval",
        "5s",
        "--print-config",
    ]);
    assert_eq!(code, 0, "{err}");
    for (line, why) in [
        ("ring_buffer_bytes = 2097152", "the file's"),
        ("stats_interval = \"5s\"", "flag wins"),
        ("base_ejection = \"45s\"", "the file's"),
        ("max_ejection_percent = 50", "defaults shown"),
    ] {
        assert!(out.contains(line), "{why}: no {line:?} in\n{out}");
    }
}

#[test]
fn invalid_values_and_unknown_keys_are_named() {
    let dir = scratch_dir("cfgbad");
    let path = write_config(&dir, "[policy]\nfailure_ratio = 1.5\n");
    let err = connmon_fails(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(
        err.trim(),
        "connmon: error: policy.failure_ratio = 1.5: must be between 0 and 1 (greater than 0)"
    );

    write_config(&dir, "[policy]\nconsecutive_refusd = 2\n");
    let err = connmon_fails(&["run", "--config", path.to_str().unwrap()]);
    assert!(
        err.contains("consecutive_refusd") && err.contains(path.to_str().unwrap()),
        "{err}"
    );

    let err = connmon_fails(&["run", "--config", "/nonexistent/connmon.toml"]);
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
    let err = connmon_fails(&[
        "run",
        "--config",
        "/dev/null",
        "--pool",
        pool.to_str().unwrap(),
        "--state-file",
        dir.join("s.json").to_str().unwrap(),
    ]);
    assert!(
        err.contains("line 3") && err.contains("300.1.1.1:80"),
        "{err}"
    );
}

//! The state file: ejections and history survive a restart; a bad file gives an
//! error and an empty state.

use super::*;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connmon-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("state.json")
}

#[test]
fn state_file_round_trip_restores_ejections_and_history() {
    let path = temp_path("round-trip");
    let config = PolicyConfig {
        max_ejection_percent: 100,
        ..PolicyConfig::default()
    };
    let mut p = engine(config.clone());
    feed(&mut p, dst(1), Outcome::Refused, BOOT);
    let mut out = Vec::new();
    p.evict_manual(dst(2), Duration::from_secs(1), BOOT, &mut out);
    tick(&mut p, BOOT + 2 * SEC);
    p.save_state(&path, BOOT + 2 * SEC).expect("save");
    let until = standing(&p, dst(1)).ejected.expect("ejected").until_ns;

    // A restart: a different monotonic origin, the same wall clock.
    let shift = 500 * SEC;
    let restarted = WallClock::from_offset_ns(1_700_000_000_000_000_000 - i128::from(shift));
    let mut q = EjectionPolicy::new(
        config,
        PoolMembership::unconfigured(),
        HOST_NETNS,
        restarted,
        2,
    )
    .expect("config");
    let mut out = Vec::new();
    let report = q
        .load_state(&path, BOOT + shift + 3 * SEC, &mut out)
        .expect("load");
    assert_eq!(
        (
            report.found,
            report.restored,
            report.reinstated,
            report.history
        ),
        (true, 1, 0, 1)
    );
    assert!(out.is_empty());
    let restored = standing(&q, dst(1)).ejected.expect("still ejected");
    assert_eq!(
        (restored.until_ns / 1_000_000, restored.reason),
        ((until + shift) / 1_000_000, Reason::Refused)
    );
    let history = standing(&q, dst(2));
    assert_eq!(
        (history.ejection_count, history.probation, history.ejected),
        (1, true, None)
    );
    assert_eq!(q.next_deadline(), Some(restored.until_ns));
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}

#[test]
fn ejections_expired_while_down_are_reinstated_on_load() {
    let path = temp_path("expired");
    let mut p = engine(PolicyConfig::default());
    feed(&mut p, dst(1), Outcome::Refused, BOOT);
    p.save_state(&path, BOOT).expect("save");
    let mut q = engine(PolicyConfig::default());
    let mut out = Vec::new();
    let report = q
        .load_state(&path, BOOT + 3_600 * SEC, &mut out)
        .expect("load");
    assert_eq!((report.restored, report.reinstated), (0, 1));
    assert!(
        matches!(out.as_slice(), [Decision::Reinstate(r)] if r.dst == dst(1) && r.ejected_ms == 3_600_000)
    );
    assert!(standing(&q, dst(1)).probation);
    assert_eq!(q.ejected(), 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
}

#[test]
fn corrupt_missing_or_foreign_state_files_give_an_error_and_empty_state() {
    let path = temp_path("corrupt");
    let mut p = engine(PolicyConfig::default());
    let mut out = Vec::new();
    assert_eq!(
        p.load_state(&path, BOOT, &mut out)
            .expect("missing is fine"),
        LoadReport::default()
    );

    let dir = path.parent().expect("dir");
    std::fs::create_dir_all(dir).expect("mkdir");
    for (content, want) in [
        ("{\"version\":1,\"destinations\":[", "is corrupt"),
        ("\u{0}\u{1}garbage", "is corrupt"),
        (
            "{\"version\":1,\"saved_at\":\"x\",\"destinations\":[{\"dst\":\"nonsense\"}]}",
            "is corrupt",
        ),
        (
            "{\"version\":99,\"saved_at\":\"x\",\"destinations\":[]}",
            "has version 99",
        ),
    ] {
        std::fs::write(&path, content).expect("write");
        let err = p.load_state(&path, BOOT, &mut out).expect_err("bad file");
        assert!(err.to_string().contains(want), "{err}");
        assert!(p.table().is_empty() && out.is_empty());
    }
    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir(&path).expect("a directory where the file should be");
    assert!(matches!(
        p.load_state(&path, BOOT, &mut out),
        Err(StateError::Read { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

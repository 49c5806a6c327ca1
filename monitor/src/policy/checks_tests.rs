//! The policy's side of the handshake checks, replayed on an injected clock: verified
//! reinstatement, early reinstatement, re-ejection, and the guards.

use super::{
    checks::{ProbeEnded, Purpose},
    tests::{self, BOOT, SEC, connect as record, dst},
    *,
};

fn engine(verify: bool) -> EjectionPolicy {
    let mut policy = tests::engine_with(|c| {
        c.jitter = 0.0;
        c.max_ejection_percent = 100;
    });
    let mut out = Vec::new();
    policy.set_verify_before_reinstate(verify, BOOT, &mut out);
    assert!(out.is_empty());
    policy
}

/// Probes `dst(1)` for `purpose`, ending in `outcome` (`None`: lost) `secs` after boot.
fn probe(
    policy: &mut EjectionPolicy,
    purpose: Purpose,
    outcome: Option<Outcome>,
    secs: u64,
) -> (ProbeVerdict, Vec<Decision>) {
    let (to, at) = (dst(1), BOOT + secs * SEC);
    let mut out = Vec::new();
    let ended = ProbeEnded {
        dst: to,
        purpose,
        outcome,
    };
    let trigger = outcome.map(|o| Trigger::from(&record(to, o, at)));
    let verdict = policy.on_probe_result(&ended, trigger, at, &mut out);
    (verdict, out)
}

/// An engine in which `dst(1)` was ejected at boot by one refused connect (30 s,
/// count 1).
fn ejected(verify: bool) -> EjectionPolicy {
    let mut policy = engine(verify);
    let mut out = Vec::new();
    policy.on_connect(&record(dst(1), Outcome::Refused, BOOT), BOOT, &mut out);
    assert!(matches!(out.as_slice(), [Decision::Evict(_)]), "{out:?}");
    policy
}

/// The decisions of a tick `secs` after boot.
fn tick(policy: &mut EjectionPolicy, secs: u64) -> Vec<Decision> {
    let mut out = Vec::new();
    policy.tick(BOOT + secs * SEC, &mut out);
    out
}

#[test]
fn an_expired_ejection_waits_for_its_probe_and_a_failure_re_ejects_with_n_plus_1() {
    let mut p = ejected(true);
    let out = tick(&mut p, 31);
    assert!(out.is_empty(), "no blind reinstatement: {out:?}");
    assert_eq!(p.take_verifications(), [dst(1)]);
    assert!(p.is_ejected(&dst(1)));
    assert_eq!(p.ejected(), 1, "still counted by the guard");
    let (verdict, out) = probe(&mut p, Purpose::Verify, Some(Outcome::Refused), 31);
    assert_eq!(verdict, ProbeVerdict::Reejected);
    let [Decision::Evict(e)] = out.as_slice() else {
        panic!("one evict expected: {out:?}");
    };
    assert_eq!(
        (e.ejection.count, e.ejection.duration_ms),
        (2, 60_000),
        "{e:?}"
    );
    assert_eq!(e.reason, Reason::Refused);
    // The second expiry: verification again, success this time.
    let out = tick(&mut p, 92);
    assert!(out.is_empty());
    assert_eq!(p.take_verifications(), [dst(1)]);
    let (verdict, out) = probe(&mut p, Purpose::Verify, Some(Outcome::Established), 92);
    assert_eq!(verdict, ProbeVerdict::Reinstated);
    let [Decision::Reinstate(r)] = out.as_slice() else {
        panic!("one reinstate expected: {out:?}");
    };
    assert!(r.verified && !r.early, "{r:?}");
    assert_eq!(p.ejected(), 0);
    let json = serde_json::to_value(&out[0]).expect("json");
    assert_eq!(json["verified"], true);
    assert!(
        json.get("early").is_none(),
        "false flags are absent: {json}"
    );
}

#[test]
fn a_lost_verification_probe_re_ejects_as_a_timeout() {
    let mut p = ejected(true);
    tick(&mut p, 31);
    let (verdict, out) = probe(&mut p, Purpose::Verify, None, 34);
    assert_eq!(verdict, ProbeVerdict::Reejected);
    let [Decision::Evict(e)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!((e.reason, e.trigger.clone()), (Reason::Timeout, None));
}

#[test]
fn an_early_success_reinstates_before_the_timer_and_an_early_failure_changes_nothing() {
    let mut p = ejected(true);
    let (verdict, out) = probe(&mut p, Purpose::Early, Some(Outcome::Refused), 5);
    assert_eq!((verdict, out.len()), (ProbeVerdict::Nothing, 0));
    let (verdict, out) = probe(&mut p, Purpose::Early, Some(Outcome::Established), 10);
    assert_eq!(verdict, ProbeVerdict::Reinstated);
    let [Decision::Reinstate(r)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(r.verified && r.early, "{r:?}");
    assert_eq!(r.ejected_ms, 10_000);
    let out = tick(&mut p, 40);
    assert!(
        out.is_empty() && p.take_verifications().is_empty(),
        "the old timer is gone"
    );
}

#[test]
fn a_probe_of_a_destination_that_is_not_ejected_changes_nothing_here() {
    let mut p = engine(true);
    let (verdict, out) = probe(&mut p, Purpose::Idle, Some(Outcome::Refused), 0);
    assert_eq!((verdict, out.len()), (ProbeVerdict::Nothing, 0));
}

#[test]
fn during_a_local_outage_a_failed_verification_is_inconclusive() {
    let mut p = ejected(true);
    tick(&mut p, 31);
    // Five other destinations fail at once: the host's network is down.
    let mut out = Vec::new();
    for i in 10..15 {
        p.on_connect(
            &record(dst(i), Outcome::Unreachable, BOOT + 32 * SEC),
            BOOT + 32 * SEC,
            &mut out,
        );
    }
    assert!(
        out.iter().any(|d| matches!(
            d,
            Decision::Diagnosis(Diagnosis {
                finding: Finding::LocalOutage { .. },
                ..
            })
        )),
        "{out:?}"
    );
    let (verdict, out) = probe(&mut p, Purpose::Verify, Some(Outcome::Unreachable), 33);
    assert_eq!(verdict, ProbeVerdict::Inconclusive);
    assert!(
        out.is_empty(),
        "no re-ejection through the host's own outage: {out:?}"
    );
    assert!(p.is_ejected(&dst(1)));
}

#[test]
fn without_verification_expiry_reinstates_blind_as_before() {
    let mut p = ejected(false);
    let out = tick(&mut p, 31);
    let [Decision::Reinstate(r)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert!(!r.verified && !r.early);
    assert!(p.take_verifications().is_empty());
    let json = serde_json::to_value(&out[0]).expect("json");
    assert!(
        json.get("verified").is_none() && json.get("early").is_none(),
        "{json}"
    );
}

#[test]
fn turning_verification_off_reinstates_what_was_waiting() {
    let mut p = ejected(true);
    tick(&mut p, 31);
    let mut out = Vec::new();
    p.set_verify_before_reinstate(false, BOOT + 32 * SEC, &mut out);
    assert!(
        matches!(out.as_slice(), [Decision::Reinstate(r)] if !r.verified),
        "{out:?}"
    );
    assert_eq!(p.ejected(), 0);
}

#[test]
fn an_ejection_that_expired_while_connmon_was_down_is_verified_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("connmon-checks-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("state.json");
    let p = ejected(true);
    p.save_state(&path, BOOT + SEC).expect("save");
    let mut q = engine(true);
    let mut out = Vec::new();
    let report = q
        .load_state(&path, BOOT + 100 * SEC, &mut out)
        .expect("load");
    assert!(out.is_empty(), "no blind reinstatement at start: {out:?}");
    assert_eq!(report.restored, 1);
    assert_eq!(q.take_verifications(), [dst(1)]);
    assert_eq!(q.ejections().collect::<Vec<_>>(), [(dst(1), true)]);
    let _ = std::fs::remove_dir_all(&dir);
}

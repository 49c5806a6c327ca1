//! The state file, as loaded at start (`EjectionPolicy::load_state`: read, version check,
//! JSON → `StateFile`, saved Unix times mapped onto this boot's monotonic clock). Any
//! bytes load or are refused with an error; what loads is saved again as a file that
//! loads to the same state, and restored ejections end.
#![no_main]

use std::{io::Write as _, path::PathBuf, sync::OnceLock};

use connmon_fuzz::Engine;
use libfuzzer_sys::fuzz_target;
use monitor::policy::state;

/// One file per fuzzing process, in /dev/shm when it exists (no disk writes).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("connmon-fuzz-state-{}.json", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .expect("writing the scratch state file");
    let mut engine = Engine::with_defaults();
    let mut out = Vec::new();
    let loaded = engine.policy.load_state(path, engine.now, &mut out);
    let Ok(_report) = loaded else {
        return;
    };
    let saved = engine.state_snapshot();
    state::write(path, &saved).expect("writing the state back");
    let reread = state::read(path)
        .expect("the state connmon wrote reads back")
        .expect("the file exists");
    assert_eq!(reread, saved, "the state file does not round-trip");
    engine.advance(u64::MAX / 2);
});

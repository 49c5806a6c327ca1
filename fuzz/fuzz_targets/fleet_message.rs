//! Fleet messages from NATS (`sinks::fleet::message::decode`: size bound, JSON, version,
//! host token, term bounds), one per input line, then what the fleet's views make of
//! them (`share` and `quorum` of 2) and the engine applying their verdicts, as the fleet
//! link hands them to the pipeline. Any bytes decode or are refused with an error; what
//! decodes encodes to bytes that decode to the same message; nothing panics.
#![no_main]

use std::time::Duration;

use connmon_fuzz::{BOOT_NS, Engine, WALL_OFFSET_NS};
use libfuzzer_sys::fuzz_target;
use monitor::{
    control::{Control, FleetVerdict},
    sinks::fleet::{
        FleetMode, message,
        view::{Action, FleetView},
    },
};

/// The engine's wall clock at its boot, in Unix ms (remote terms are in Unix ms).
const BOOT_UNIX_MS: u64 = ((WALL_OFFSET_NS as u64) + BOOT_NS) / 1_000_000;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::with_defaults();
    let window = Duration::from_secs(60);
    let mut views = [
        FleetView::new(FleetMode::Share, 1, window, "self"),
        FleetView::new(FleetMode::Quorum, 2, window, "self"),
    ];
    for line in data.split(|&b| b == b'\n') {
        let msg = match message::decode(line) {
            Ok(msg) => msg,
            Err(err) => {
                let _ = err.to_string();
                continue;
            }
        };
        let encoded = msg.encode();
        let again = message::decode(&encoded).unwrap_or_else(|e| {
            panic!(
                "{msg:?} encodes as {:?}, which does not decode: {e}",
                String::from_utf8_lossy(&encoded)
            )
        });
        assert_eq!(again, msg, "a message does not survive encode → decode");
        let now_ms = BOOT_UNIX_MS + (engine.now - BOOT_NS) / 1_000_000;
        for view in &mut views {
            let verdict = match view.on_message(&msg, now_ms) {
                Ok(Action::Apply {
                    dst,
                    duration,
                    origin,
                }) => FleetVerdict::Evict {
                    dst,
                    duration,
                    origin,
                },
                Ok(Action::Lift { dst }) => FleetVerdict::Reinstate { dst },
                Err(_) => continue,
            };
            let (reply, _answer) = tokio::sync::oneshot::channel();
            engine.control(Control::Fleet { verdict, reply });
        }
        engine.advance(250_000_000);
    }
    for view in &mut views {
        view.prune(u64::MAX);
    }
    engine.advance(u64::MAX / 2);
});

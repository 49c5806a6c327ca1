//! The fleet's wire format (docs/fleet.md): each input line is a NATS message from
//! another host and goes through the real decoder (`sinks::fleet::message::decode`,
//! the only way in for bytes from the network). A decoded message must survive a
//! re-encode unchanged and respect the decoder's bounds; it then goes through a
//! [`FleetView`] (the mode from the first byte) and every action the view takes is
//! carried out on the real decision engine as the agent's pipeline does
//! (`Control::Fleet`), with the clock moving between lines. Every published decision
//! must be one JSON object on one line.
#![no_main]

use std::time::Duration;

use connmon_fuzz::{BOOT_NS, Engine, WALL_OFFSET_NS};
use libfuzzer_sys::fuzz_target;
use monitor::{
    control::{Control, FleetVerdict},
    sinks::fleet::{
        FleetMode,
        message::{self, FleetMessage, MAX_MESSAGE_BYTES, MAX_TERM_MS},
        view::{Action, FleetView},
    },
};

/// The engine's wall clock in Unix ms.
fn wall_ms(engine: &Engine) -> u64 {
    let ns = WALL_OFFSET_NS + i128::from(engine.now - BOOT_NS);
    u64::try_from(ns / 1_000_000).unwrap_or(0)
}

fn carry_out(engine: &mut Engine, action: Action) {
    let verdict = match action {
        Action::Apply {
            dst,
            duration,
            origin,
        } => {
            assert!(
                duration > Duration::ZERO && duration <= Duration::from_millis(MAX_TERM_MS),
                "a remote term out of bounds: {duration:?}"
            );
            FleetVerdict::Evict {
                dst,
                duration,
                origin,
            }
        }
        Action::Lift { dst } => FleetVerdict::Reinstate { dst },
    };
    let (reply, _answer) = tokio::sync::oneshot::channel();
    engine.control(Control::Fleet { verdict, reply });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mode = match mode % 3 {
        0 => FleetMode::Share,
        1 => FleetMode::Quorum,
        _ => FleetMode::Observe,
    };
    let mut engine = Engine::with_defaults();
    let mut view = FleetView::new(mode, 2, Duration::from_secs(30), "me");
    let mut heartbeats = Vec::new();
    let mut evicts = Vec::new();
    for line in data.split(|&b| b == b'\n').take(64) {
        let Ok(m) = message::decode(line) else {
            continue;
        };
        assert!(line.len() <= MAX_MESSAGE_BYTES);
        let again = message::decode(&m.encode())
            .unwrap_or_else(|e| panic!("a decoded message does not decode again ({e}): {m:?}"));
        assert_eq!(again, m, "a re-encoded message changed");
        match &m {
            FleetMessage::Evict(e) => {
                assert!(e.duration_ms > 0 && e.duration_ms <= MAX_TERM_MS);
                evicts.push(e.clone());
            }
            FleetMessage::Heartbeat(h) => heartbeats.push(h.clone()),
            FleetMessage::Reinstate(_) => {}
        }
        let now = wall_ms(&engine);
        if let Ok(action) = view.on_message(&m, now) {
            carry_out(&mut engine, action);
        }
        for action in view.take_retractions() {
            carry_out(&mut engine, action);
        }
        engine.advance(1_000_000_000);
    }
    // A resync with everything seen (what the bucket would hold), then the terms end.
    let now = wall_ms(&engine);
    view.prune(now);
    for action in view.resync(&heartbeats, &evicts, now) {
        carry_out(&mut engine, action);
    }
    engine.advance(u64::MAX / 2);
});

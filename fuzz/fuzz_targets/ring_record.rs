//! The kernel → agent boundary: ring-buffer records (`source::event::decode`), of any
//! length and content, fed in sequence to the engine as the pipeline feeds them, with
//! each outcome and decision rendered as NDJSON for stdout and the bus. A record the
//! kernel could never write (bad family, kind, outcome, times running backwards) must be
//! a decode error or a harmless event, never a panic.
#![no_main]

use connmon_fuzz::{Engine, assert_one_json_object};
use libfuzzer_sys::fuzz_target;
use monitor::{
    clock::WallClock,
    sinks::json,
    source::event::{KernelEvent, decode},
};
use monitor_common::ConnectEvent;

const RECORD: usize = size_of::<ConnectEvent>();

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::with_defaults();
    let wall = WallClock::from_offset_ns(connmon_fuzz::WALL_OFFSET_NS);
    // A short tail is decoded too: it must be reported as short.
    for record in data.chunks(RECORD).take(256) {
        let Ok(event) = decode(record) else {
            continue;
        };
        let role = match &event {
            KernelEvent::Connect(c) => engine.policy.pool().role(&c.dst),
            KernelEvent::SynRetransmit(r) => engine.policy.pool().role(&r.dst),
        };
        let mut line = Vec::new();
        match &event {
            KernelEvent::Connect(c) => json::connect(&mut line, c, role, false, &wall),
            KernelEvent::SynRetransmit(r) => json::syn_retransmit(&mut line, r, role, false, &wall),
        }
        assert_one_json_object(std::str::from_utf8(&line).expect("NDJSON is UTF-8"));
        engine.kernel_event(&event);
    }
    engine.advance(u64::MAX / 2);
});

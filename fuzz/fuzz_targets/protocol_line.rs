//! The socket protocol: each input line goes through the real line parser
//! (`server::protocol::parse_line`) and, when it is a command, through the engine as a
//! privileged client's command (pool changes, evict, reinstate, snapshot), with the
//! clock moving between lines. Every reply and every published decision must be one
//! JSON object on one line.
#![no_main]

use connmon_fuzz::{Engine, assert_one_json_object};
use libfuzzer_sys::fuzz_target;
use monitor::server::protocol;

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::with_defaults();
    for line in data.split(|&b| b == b'\n').take(64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = protocol::parse_line(line);
        let reply = match parsed.request {
            Ok(request) => engine.request(request, parsed.id.as_ref()),
            Err(err) => protocol::error(&err, parsed.id.as_ref()),
        };
        assert_one_json_object(&reply);
        engine.advance(1_000_000_000);
    }
    // Every ejection a command made ends in time.
    engine.advance(u64::MAX / 2);
});

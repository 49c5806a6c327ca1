//! HAProxy's `show servers state` answer, as read from the runtime API
//! (`sinks::haproxy::servers_state::parse`): any text, never a panic; every server found
//! has a backend and a name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::sinks::haproxy::servers_state;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match servers_state::parse(&text) {
        Ok(servers) => {
            for s in servers {
                let _ = s.forced_maint();
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});

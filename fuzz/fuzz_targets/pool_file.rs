//! The pool file (`--pool FILE`, reloaded on SIGHUP): `PoolMembership::parse_entries`,
//! then the membership built from it. Entries print and re-parse to themselves, and
//! every listed member is classified as a pool member.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use monitor::policy::{PoolEntry, PoolMembership, Role};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let entries = match PoolMembership::parse_entries(text) {
        Ok(entries) => entries,
        Err(err) => {
            // The error names each bad line; rendering it must not panic.
            let _ = err.to_string();
            return;
        }
    };
    for entry in &entries {
        let printed = entry.to_string();
        let again: PoolEntry = PoolMembership::parse_entry(&printed).unwrap_or_else(|e| {
            panic!("{entry:?} prints as {printed:?}, which does not parse: {e}")
        });
        assert_eq!(&again, entry, "{printed:?} does not re-parse to itself");
    }
    let pool = PoolMembership::from_entries(entries);
    let members: Vec<SocketAddr> = pool.members().iter().copied().collect();
    for member in members {
        assert_eq!(
            pool.role(&member),
            Role::Proxy,
            "{member} is listed but not a member"
        );
    }
    let reparsed = PoolMembership::parse(
        &pool
            .entries()
            .iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>(),
    )
    .expect("the pool's own entries parse");
    assert_eq!(reparsed.entries(), pool.entries());
});

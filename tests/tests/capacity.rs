//! Root integration test for the hot path's capacity (issue #12): per-connect state lives
//! in a preallocated hash of 65 536 sockets (`CONNECTS`) with socket-local storage as the
//! overflow, so more than 65 536 concurrently pending connects are all attributed — the
//! last 4 464+ of the 70 000 below only through the overflow path (the stats line's
//! `overflow` counter says how many). Kept out of the emulated kernel matrix: 70 000
//! sockets are cheap natively, minutes under TCG.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use connmon_integration::{Agent, BLACKHOLE_V4, Netns, require_root};

/// Starts `count` non-blocking connects to `targets` (round robin) in a forked child and
/// keeps them pending until told to exit (which closes them all). The child uses only
/// raw system calls (it is forked from a multi-threaded process). Returns its pid.
fn fork_pending_connects(
    count: usize,
    targets: &[libc::sockaddr_in],
    ready: i32,
    go: i32,
) -> libc::pid_t {
    // SAFETY: the child only makes async-signal-safe system calls and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid > 0 {
        return pid;
    }
    // SAFETY: (whole child) raw system calls on valid pointers; no allocation, no locks.
    unsafe {
        for i in 0..count {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            if fd < 0 {
                libc::_exit(10);
            }
            let sa = &targets[i % targets.len()];
            let rc = libc::connect(
                fd,
                (sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if rc == 0 || *libc::__errno_location() != libc::EINPROGRESS {
                libc::_exit(11);
            }
        }
        let byte = 1u8;
        libc::write(ready, (&byte as *const u8).cast(), 1);
        let mut buf = 0u8;
        libc::read(go, (&mut buf as *mut u8).cast(), 1);
        libc::_exit(0);
    }
}

/// More connects pending at once than the old 65 536-entry maps held, to a neighbour that
/// drops every SYN; then every one is closed by its application. Each must be reported
/// (`abandoned`), attributed to the process that connected. Spread over several
/// processes: one process may not hold 70 000 descriptors (RLIMIT_NOFILE).
#[test]
fn more_than_65536_pending_connects_are_all_attributed() {
    require_root();
    const CHILDREN: usize = 5;
    const PER_CHILD: usize = 14_000;
    let ns = Netns::new("many");
    // No kernel SYN timeout during the test: the applications end every attempt.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
    // Room for every record even if the reader stalls.
    let mut agent = Agent::start(&["--ring-buffer-bytes", "67108864"]);
    let started = Instant::now();
    let (children, _) = ns.run("manyconn", move || {
        // Eight destination ports: the kernel hands connect() even ports first, and
        // a port range filled past that half makes every further connect scan it.
        let targets: Vec<libc::sockaddr_in> = (80u16..88)
            .map(|port| {
                let ip: std::net::Ipv4Addr = BLACKHOLE_V4.parse().expect("address");
                libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    sin_zero: [0; 8],
                }
            })
            .collect();
        let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
        let (go_r, go_w) = nix::unistd::pipe().expect("pipe");
        let pids: Vec<libc::pid_t> = (0..CHILDREN)
            .map(|_| {
                fork_pending_connects(PER_CHILD, &targets, ready_w.as_raw_fd(), go_r.as_raw_fd())
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ready = 0;
        while ready < CHILDREN {
            assert!(
                Instant::now() < deadline,
                "only {ready} children ready in 120 s"
            );
            let mut buf = [0u8; 8];
            let n = nix::unistd::read(&ready_r, &mut buf).expect("read ready pipe");
            ready += n;
        }
        // Every connect of every child is pending now: let them close them.
        nix::unistd::write(&go_w, &[1u8; CHILDREN]).expect("write go pipe");
        for &pid in &pids {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child {pid} failed: status {status:#x} (10: socket, 11: connect)"
            );
        }
        pids
    });
    let until = Instant::now() + Duration::from_secs(120);
    let mut got: HashMap<u32, HashSet<String>> = HashMap::new();
    let mut scanned = 0;
    let total = |got: &HashMap<u32, HashSet<String>>| got.values().map(HashSet::len).sum::<usize>();
    while total(&got) < CHILDREN * PER_CHILD && Instant::now() < until {
        let lines = agent.collect_for(Duration::from_millis(500));
        for v in &lines[scanned..] {
            if v["type"] != "connect" || v["netns"] != ns.inode || v["outcome"] != "abandoned" {
                continue;
            }
            let tgid = v["tgid"].as_u64().unwrap_or(0) as u32;
            assert!(
                children.contains(&(tgid as libc::pid_t)),
                "attributed to one of the connecting processes {children:?}: {v}"
            );
            assert_eq!(v["pid"], tgid, "{v}");
            assert_eq!(v["comm"], "manyconn", "{v}");
            got.entry(tgid)
                .or_default()
                .insert(format!("{} {}", v["src"], v["dst"]));
        }
        scanned = lines.len();
    }
    let (ok, lines) = agent.stop();
    assert!(ok, "agent exit status");
    let last = lines
        .iter()
        .rev()
        .find(|v| v["type"] == "stats")
        .expect("final stats line");
    assert_eq!(last["lost_events"], 0, "{last}");
    assert_eq!(last["storage_failed"], 0, "{last}");
    assert!(
        last["overflow"].as_u64().is_some_and(|n| n > 0),
        "70 000 pending connects overflow the 65 536-entry hash into socket storage: {last}"
    );
    for pid in &children {
        let n = got.get(&(*pid as u32)).map_or(0, HashSet::len);
        assert_eq!(
            n, PER_CHILD,
            "process {pid}: every pending connect reported as abandoned and attributed (stats: {last})"
        );
    }
    eprintln!(
        "{} pending connects attributed in {:?}",
        CHILDREN * PER_CHILD,
        started.elapsed()
    );
}

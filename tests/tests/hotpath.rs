//! Root integration tests for the hot path's two promises (issue #12):
//!
//! - classification does not depend on whether the application already read `SO_ERROR`
//!   (an application that reads it from epoll right after the wake-up, and one that
//!   busy-polls it, see the same outcome connmon reports);
//! - per-connect state has no capacity cliff: more than 65 536 concurrently pending
//!   connects are all attributed (socket-local storage instead of LRU hashes).
//!
//! Each test builds its own network namespace and selects connmon's lines by its inode.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use connmon_integration::{Agent, BLACKHOLE_V4, Netns, require_root};
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

/// Neighbours in the test namespace's /24 that nobody answers ARP for (the namespace owns
/// .1, .2 is a permanent bogus neighbour): connects to them fail with EHOSTUNREACH once
/// resolution fails (~300 ms with the namespace's neighbour settings).
fn no_arp_neighbours() -> impl Iterator<Item = String> {
    (10..60).map(|i| format!("10.200.0.{i}"))
}

/// Lets every queued SYN get its ICMP host-unreachable: a bigger unresolved queue per
/// neighbour and no ICMP rate limit for destination-unreachable (both per namespace).
fn unreachable_without_limits(ns: &Netns) {
    ns.sysctl("net.ipv4.neigh.veth0.unres_qlen_bytes", "4194304");
    ns.sysctl("net.ipv4.icmp_ratemask", "0");
    // No kernel SYN timeout may race the unreachable report.
    ns.sysctl("net.ipv4.tcp_syn_retries", "6");
}

/// One connect the application made and what it saw: the destination and the error
/// `SO_ERROR` gave it.
struct Seen {
    dst: String,
    errno: i32,
}

/// Starts a non-blocking connect to `dst:80`; returns the socket and its local port.
fn start_connect(dst: &str) -> (Socket, u16) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_nonblocking(true).expect("nonblocking");
    let target: std::net::SocketAddr = format!("{dst}:80").parse().expect("address");
    let err = s
        .connect(&SockAddr::from(target))
        .expect_err("a connect to a neighbour that never answers cannot complete at once");
    assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
    let port = s
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("inet address")
        .port();
    (s, port)
}

/// The errno `SO_ERROR` returns (and clears), 0 if none.
fn so_error(s: &Socket) -> i32 {
    match s.take_error() {
        Ok(Some(e)) => e.raw_os_error().unwrap_or(-1),
        Ok(None) => 0,
        Err(e) => panic!("getsockopt(SO_ERROR): {e}"),
    }
}

/// The outcome connmon must report for what the application saw.
fn expected_outcome(errno: i32) -> &'static str {
    match errno {
        libc::ETIMEDOUT => "timeout",
        libc::ECONNREFUSED => "refused",
        _ => "unreachable",
    }
}

/// Waits until connmon reported an outcome for every local port in `seen` (from `ns`),
/// and returns them by local port.
fn outcomes_for(
    agent: &mut Agent,
    ns: &Netns,
    seen: &HashMap<u16, Seen>,
    deadline: Duration,
) -> HashMap<u16, Value> {
    let until = Instant::now() + deadline;
    let mut found = HashMap::new();
    let mut scanned = 0;
    loop {
        let lines = agent.collect_for(Duration::from_millis(300));
        for v in &lines[scanned..] {
            if v["type"] != "connect" || v["netns"] != ns.inode || v["outcome"].is_null() {
                continue;
            }
            let Some(port) = v["src"]
                .as_str()
                .and_then(|s| s.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
            else {
                continue;
            };
            if seen.contains_key(&port) {
                found.insert(port, v.clone());
            }
        }
        scanned = lines.len();
        if found.len() == seen.len() || Instant::now() > until {
            return found;
        }
    }
}

/// Compares connmon's outcomes with what the application saw: the same outcome for
/// every attempt, and the same errno wherever connmon reports one. Returns how many
/// outcomes connmon had to infer without the errno (the application consumed it before
/// any hook could read it: see `counter::ERROR_CONSUMED`).
fn assert_same_outcomes(
    what: &str,
    seen: &HashMap<u16, Seen>,
    found: &HashMap<u16, Value>,
    tid_of: &HashMap<u16, u32>,
) -> usize {
    let missing: Vec<_> = seen.keys().filter(|p| !found.contains_key(p)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} attempts have no outcome from connmon (ports {:?}...)",
        missing.len(),
        seen.len(),
        &missing[..missing.len().min(10)]
    );
    let mut wrong = Vec::new();
    let mut inferred = 0;
    for (port, app) in seen {
        let v = &found[port];
        let errno = v["errno"].as_i64().unwrap_or(-1) as i32;
        let ok = v["outcome"] == expected_outcome(app.errno)
            && v["dst"] == format!("{}:80", app.dst)
            && v["pid"] == tid_of[port]
            && (errno == app.errno || errno == 0);
        if errno == 0 {
            inferred += 1;
        }
        if !ok {
            wrong.push(format!("app saw errno {}: {v}", app.errno));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} attempts misclassified or misattributed, e.g.:\n{}",
        wrong.len(),
        seen.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    inferred
}

/// Thousands of non-blocking connects to neighbours that never answer; the application
/// waits in epoll and reads `SO_ERROR` the moment it is woken — the usual pattern, which
/// consumes `sk_err`. connmon must still report every one as `unreachable`.
#[test]
fn unreachable_is_classified_when_the_application_reads_so_error_from_epoll() {
    require_root();
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 250;
    let ns = Netns::new("epl");
    unreachable_without_limits(&ns);
    let mut agent = Agent::start(&["--ring-buffer-bytes", "8388608"]);
    let started = Instant::now();
    let ((seen, tids), _) = ns.run("epoller", move || {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let mut seen = HashMap::new();
        let mut tids = HashMap::new();
        // SAFETY: plain syscall; the fd is closed below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1");
        let dsts: Vec<String> = no_arp_neighbours().collect();
        for round in 0..ROUNDS {
            let mut pending: HashMap<i32, (Socket, u16, String)> = HashMap::new();
            for i in 0..PER_ROUND {
                let dst = &dsts[(round * PER_ROUND + i) % dsts.len()];
                let (s, port) = start_connect(dst);
                let fd = s.as_raw_fd();
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLOUT | libc::EPOLLERR) as u32,
                    u64: fd as u64,
                };
                // SAFETY: valid epoll and socket fds, a valid event.
                let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                assert_eq!(rc, 0, "epoll_ctl");
                pending.insert(fd, (s, port, dst.clone()));
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
            while !pending.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{} connects neither failed nor succeeded in 60 s",
                    pending.len()
                );
                // SAFETY: `events` has room for 64 entries.
                let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 64, 1000) };
                for ev in &events[..n.max(0) as usize] {
                    let fd = ev.u64 as i32;
                    let Some((s, port, dst)) = pending.remove(&fd) else {
                        continue;
                    };
                    // At once, as a non-blocking client does to learn the result.
                    let errno = so_error(&s);
                    seen.insert(port, Seen { dst, errno });
                    tids.insert(port, tid);
                    drop(s);
                }
            }
        }
        // SAFETY: closing our own epoll fd.
        unsafe { libc::close(ep) };
        (seen, tids)
    });
    let unreachable = seen
        .values()
        .filter(|s| s.errno == libc::EHOSTUNREACH)
        .count();
    assert!(
        unreachable * 10 >= seen.len() * 9,
        "the namespace should make (almost) every connect fail with EHOSTUNREACH: {unreachable} of {}",
        seen.len()
    );
    let found = outcomes_for(&mut agent, &ns, &seen, Duration::from_secs(60));
    let inferred = assert_same_outcomes("epoll", &seen, &found, &tids);
    eprintln!(
        "epoll: {} attempts in {:?}, all classified; {inferred} without errno",
        seen.len(),
        started.elapsed()
    );
}

/// An application that spins on `getsockopt(SO_ERROR)` instead of waiting: it can read
/// (and clear) `sk_err` in the instant between the kernel setting it and the CLOSE
/// transition. connmon must never turn such a connect into `abandoned`.
#[test]
fn unreachable_is_classified_when_the_application_busy_polls_so_error() {
    require_root();
    const ROUNDS: usize = 30;
    const PER_ROUND: usize = 16;
    const POLLERS: usize = 2;
    let ns = Netns::new("bsy");
    unreachable_without_limits(&ns);
    let mut agent = Agent::start(&[]);
    let mut seen = HashMap::new();
    let mut tids = HashMap::new();
    let dsts: Vec<String> = no_arp_neighbours().collect();
    for round in 0..ROUNDS {
        let pollers: Vec<_> = (0..POLLERS)
            .map(|p| {
                let dsts: Vec<String> = (0..PER_ROUND / POLLERS)
                    .map(|i| dsts[(round * PER_ROUND + p * PER_ROUND / POLLERS + i) % dsts.len()].clone())
                    .collect();
                let path = ns.path();
                thread::Builder::new()
                    .name("busypoller".into())
                    .spawn(move || {
                        let file = std::fs::File::open(path).expect("open netns");
                        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .expect("setns");
                        // SAFETY: gettid has no preconditions.
                        let tid = unsafe { libc::gettid() } as u32;
                        let mut pending: Vec<(Socket, u16, String)> = dsts
                            .into_iter()
                            .map(|d| {
                                let (s, port) = start_connect(&d);
                                (s, port, d)
                            })
                            .collect();
                        let mut out = Vec::new();
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while !pending.is_empty() {
                            assert!(Instant::now() < deadline, "connects pending after 60 s");
                            pending.retain(|(s, port, dst)| {
                                let errno = so_error(s);
                                if errno == 0 {
                                    return true;
                                }
                                out.push((*port, dst.clone(), errno));
                                false
                            });
                        }
                        (out, tid)
                    })
                    .expect("spawn")
            })
            .collect();
        for p in pollers {
            let (out, tid) = p.join().expect("poller thread");
            for (port, dst, errno) in out {
                seen.insert(port, Seen { dst, errno });
                tids.insert(port, tid);
            }
        }
    }
    let found = outcomes_for(&mut agent, &ns, &seen, Duration::from_secs(60));
    let inferred = assert_same_outcomes("busy-poll", &seen, &found, &tids);
    eprintln!(
        "busy-poll: {} attempts, all classified; {inferred} without errno (consumed before any hook ran)",
        seen.len()
    );
}

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
    // SAFETY (whole child): raw system calls on valid pointers; no allocation, no locks.
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
        let targets: Vec<libc::sockaddr_in> = [80u16, 81]
            .iter()
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
                fork_pending_connects(
                    PER_CHILD,
                    &targets,
                    ready_w.as_raw_fd(),
                    go_r.as_raw_fd(),
                )
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ready = 0;
        while ready < CHILDREN {
            assert!(Instant::now() < deadline, "only {ready} children ready in 120 s");
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
    let mut got: HashMap<u32, std::collections::HashSet<String>> = HashMap::new();
    let mut scanned = 0;
    let total = |got: &HashMap<u32, std::collections::HashSet<String>>| {
        got.values().map(std::collections::HashSet::len).sum::<usize>()
    };
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
    for pid in &children {
        let n = got.get(&(*pid as u32)).map_or(0, std::collections::HashSet::len);
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

//! Root integration tests of the agent's own behaviour: losses are counted and reported,
//! the agent starts without tracefs (BTF hooks) in both usual layouts, and bad conditions give one clear error line.

use std::{net::TcpStream, os::unix::process::CommandExt as _, process::Command, time::Duration};

use connmon_integration::{
    Agent, Netns, closed_port, connmon_bin, require_root, timing::patient, world_readable_copy,
};

#[test]
fn a_full_ring_buffer_is_counted_and_reported() {
    require_root();
    let ns = Netns::new("lost");
    // The smallest ring buffer (one page, ~34 records) and a reader that is stopped
    // while 300 connects are refused: most records cannot be written.
    let mut agent = Agent::start(&["--ring-buffer-bytes", "4096", "--stats-interval", "1s"]);
    agent.signal(libc::SIGSTOP);
    let (attempts, _) = ns.run("flooder", || {
        let port = closed_port("127.0.0.1");
        (0..300)
            .filter(|_| TcpStream::connect(("127.0.0.1", port)).is_err())
            .count()
    });
    assert_eq!(attempts, 300);
    agent.signal(libc::SIGCONT);
    // Polled, not slept: a slow (emulated) CPU takes longer to drain and report.
    let stderr_before_stop = agent.wait_for_stderr("events were lost", Duration::from_secs(60));
    agent.wait_for(
        "a periodic stats line with losses",
        Duration::from_secs(60),
        |l| l["type"] == "stats" && l["final"] == false && l["lost_events"].as_u64() > Some(0),
    );
    let (ok, lines) = agent.stop();
    assert!(ok);
    let delivered = lines
        .iter()
        .filter(|l| l["type"] == "connect" && l["netns"] == ns.inode)
        .count();
    let last = lines.last().expect("final stats");
    assert_eq!(last["final"], true, "{last}");
    let lost = last["lost_events"].as_u64().unwrap();
    assert!(lost > 0, "no lost events reported: {last}");
    assert!(
        delivered < 300,
        "all 300 delivered through a one-page ring buffer?"
    );
    assert!(
        delivered as u64 + lost >= 300,
        "{delivered} delivered + {lost} lost < 300 attempts: an event vanished uncounted"
    );
    let periodic = lines.iter().any(|l| {
        l["type"] == "stats" && l["final"] == false && l["lost_events"].as_u64() > Some(0)
    });
    assert!(periodic, "a periodic stats line reports the loss");
    assert!(
        stderr_before_stop.contains("events were lost"),
        "stderr warns about the loss:\n{stderr_before_stop}"
    );
}

/// Where tracefs can be found when the agent starts.
#[derive(Clone, Copy, Debug)]
enum TracefsLayout {
    /// Neither tracefs nor debugfs mounted (a minimal system): the agent mounts tracefs
    /// on /sys/kernel/tracing itself.
    Bare,
    /// debugfs mounted on /sys/kernel/debug, tracefs not mounted (systemd distributions,
    /// virtme-ng): /sys/kernel/debug/tracing is an automount of tracefs, which the agent
    /// uses without mounting anything.
    DebugfsOnly,
}

/// Detaches every mount stacked on `path` (in the caller's mount namespace).
fn detach_all(path: &str) {
    while nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// Starts the agent in a mount namespace of its own, set up as `layout` says, so the
/// host's mounts (and other agents using them) are never touched.
fn agent_in_layout(layout: TracefsLayout) -> Agent {
    Agent::start_with(&[], move |cmd| {
        // SAFETY: the hook runs in the forked child before exec and only makes syscalls.
        unsafe {
            cmd.pre_exec(move || {
                use nix::{mount::MsFlags, sched::CloneFlags};
                nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                detach_all("/sys/kernel/tracing");
                detach_all("/sys/kernel/debug/tracing");
                detach_all("/sys/kernel/debug");
                if let TracefsLayout::DebugfsOnly = layout {
                    nix::mount::mount(
                        Some("debugfs"),
                        "/sys/kernel/debug",
                        Some("debugfs"),
                        MsFlags::empty(),
                        None::<&str>,
                    )?;
                }
                Ok(())
            })
        };
    })
}

/// The hooks are BTF-based (tp_btf, fentry): no tracefs is needed, none is mounted.
#[test]
fn starts_with_tracefs_unmounted() {
    require_root();
    for layout in [TracefsLayout::Bare, TracefsLayout::DebugfsOnly] {
        let ns = Netns::new("tfs");
        let mut agent = agent_in_layout(layout);
        let stderr = agent.stderr();
        assert!(
            !stderr.contains("mounted tracefs") && stderr.contains("attached to tp_btf/"),
            "{layout:?}: the agent should attach without tracefs:\n{stderr}"
        );
        agent.wait_for_refused_connect("refused line", &ns, "tracefs", Duration::from_secs(30));
    }
}

#[test]
fn non_root_gets_one_clear_error_line() {
    require_root();
    let bin = world_readable_copy(&connmon_bin());
    let out = Command::new(&bin)
        .arg("run")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run connmon");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // No capabilities at all: each one connmon needs is named, with what it is for.
    let stderr = stderr.trim();
    assert!(
        stderr.starts_with("connmon: error: missing CAP_BPF, CAP_PERFMON")
            && stderr.contains("CAP_BPF creates the eBPF maps")
            && stderr.contains(
                "CAP_PERFMON lets the tracing programs (tp_btf, fentry) read kernel memory"
            )
            && !stderr.contains('\n'),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_ring_buffer_size_is_rejected_before_loading() {
    let out = Command::new(connmon_bin())
        .args(["run", "--ring-buffer-bytes", "5000"])
        .output()
        .expect("run connmon");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "connmon: error: agent.ring_buffer_bytes = 5000: ring buffer size 5000 must be a power of two and at least 4096 bytes (e.g. 262144)"
    );
}

/// Names (as the kernel truncates them, 15 bytes) of connmon's loaded tracepoint programs.
fn connmon_programs() -> Vec<String> {
    const OURS: [&str; 6] = [
        "inet_sock_set_s",
        "tcp_receive_res",
        "tcp_retransmit_",
        "tcp_done_with_e",
        "sk_error_report",
        "inet_sk_error_r",
    ];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| OURS.contains(&name.as_str()))
        .collect()
}

/// How long the kernel may take to free an exited agent's programs: a deadline (10 s
/// was not always enough on an overloaded host, see crash.rs).
fn freed_within() -> Duration {
    patient(Duration::from_secs(30))
}

/// connmon's programs still loaded once there are none, or after [`freed_within`]. The
/// kernel frees a program once its last link and fd are gone, after the process has
/// exited (deferred work, run late on an overloaded host): poll, with a deadline, not a
/// latency goal.
fn programs_left() -> Vec<String> {
    let deadline = std::time::Instant::now() + freed_within();
    while !connmon_programs().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    connmon_programs()
}

#[test]
fn sigterm_detaches_every_program() {
    require_root();
    // The previous test's agent may still be being freed by the kernel.
    let left = programs_left();
    assert!(left.is_empty(), "another connmon is running: {left:?}");
    let agent = Agent::start(&[]);
    let want = connmon_integration::expected_programs(&agent);
    assert_eq!(
        connmon_programs().len(),
        want,
        "every program of the probe table this kernel needs loaded while running"
    );
    let (ok, lines) = agent.stop();
    assert!(ok, "exit status 0 after SIGTERM");
    assert_eq!(
        lines.last().map(|l| l["final"] == true),
        Some(true),
        "final stats line written"
    );
    let left = programs_left();
    assert!(
        left.is_empty(),
        "programs left loaded {:?} after exit: {left:?}",
        freed_within()
    );
}

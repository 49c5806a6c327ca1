//! Root integration tests for trusted evidence (issue #10): who can move a verdict.
//!
//! - An unprivileged user's own network namespace (`unshare -Urn`, a child user
//!   namespace) with pool members' addresses on its loopback: reported as
//!   `"trusted": false`, nothing evicted, HAProxy untouched — then a connect from a
//!   root-created namespace evicts as before (the pipeline was live all along).
//! - A root-created namespace refusing its own `127.0.0.1:P` while the host's listens:
//!   `localhost_trap`, the host's member never evicted; the same refusal in the host's
//!   namespace evicts it.
//! - `[policy.evidence]` allow-lists, a process in a test cgroup v2 directory with a
//!   Docker-style scope name (`cgroup`, `container` on its events and on the trigger),
//!   and a SIGHUP reload of the scope.
//!
//! Every test builds its own network namespaces (deleted on drop) and selects events by
//! their inode, addresses and ports.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use connmon_integration::{
    Agent, LOCAL_V4, Netns, closed_port, haproxy::Haproxy, is_about, require_root, scratch_dir, sh,
    write_config,
};
use serde_json::Value;

/// How long to wait for an expected line: generous, because the kernel matrix runs these
/// tests on an emulated CPU (waiting ends as soon as the line arrives).
const WAIT: Duration = Duration::from_secs(30);

/// Guards, opened wide: the agent sees every connect on the host, and failures of
/// anything else running at the same time must not hold back this test's evictions.
const OPEN_GUARDS: &str =
    "jitter = 0.0\nmax_ejection_percent = 100\noutage_min_destinations = 100000\n";

fn evictions_of<'a>(lines: &'a [Value], dst: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "evict" && l["dst"] == dst)
        .collect()
}

/// The attack of issue #10, as uid 65534: a private user + network namespace with the
/// pool members' addresses on its loopback, and refused connects to each of them.
/// Returns the private namespace's inode (printed from inside it).
fn attack_as_nobody(members: &[SocketAddr]) -> u32 {
    let mut script = String::from("readlink /proc/self/ns/net; ip link set lo up; ");
    let mut targets = Vec::new();
    for m in members {
        script.push_str(&format!("ip addr add {}/32 dev lo 2>/dev/null; ", m.ip()));
        targets.push(format!("(\"{}\", {})", m.ip(), m.port()));
    }
    script.push_str(&format!(
        "exec python3 -c 'import socket\nfor t in [{}]:\n  for _ in range(3):\n    try: socket.create_connection(t, timeout=2).close()\n    except OSError as e: assert e.errno == 111, e\nprint(\"attacked\")'",
        targets.join(", ")
    ));
    let out = sh(&[
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "unshare",
        "-Urn",
        "sh",
        "-c",
        &script,
    ]);
    let mut lines = out.lines();
    let inode = lines
        .next()
        .and_then(|l| l.strip_prefix("net:["))
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no namespace inode in {out:?}"));
    assert_eq!(lines.next(), Some("attacked"), "{out}");
    inode
}

#[test]
fn an_unprivileged_users_namespace_evicts_nothing_and_leaves_haproxy_alone() {
    require_root();
    let ns = Netns::new("trust");
    let members: Vec<SocketAddr> = (10..14)
        .map(|i| format!("10.200.0.{i}:80").parse().expect("addr"))
        .collect();
    // The control below: the first member's address refuses inside the root-created
    // namespace too.
    sh(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        "10.200.0.10/32",
        "dev",
        "lo",
    ]);
    let dir = scratch_dir("trust");
    let servers: Vec<(String, SocketAddr)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("s{i}"), *m))
        .collect();
    let mut sections = format!(
        "frontend front\n    bind 127.0.0.1:{}\n    default_backend proxies\nbackend proxies\n",
        closed_port("127.0.0.1")
    );
    for (name, addr) in &servers {
        sections.push_str(&format!("    server {name} {addr}\n"));
    }
    let haproxy = Haproxy::start(&ns, &dir, &sections);
    let config = write_config(
        &dir,
        format!(
            "[agent]\nsocket = \"{}\"\n\n[policy]\n{OPEN_GUARDS}\n\
             [[haproxy]]\nsocket = \"{}\"\nbackends = [\"proxies\"]\nrefresh = \"1s\"\npool_from_haproxy = true\n",
            dir.join("connmon.sock").display(),
            haproxy.socket.display()
        ),
    );
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf-8")]);
    agent.wait_for_stderr("pool updated from haproxy", Duration::from_secs(10));

    let private = attack_as_nobody(&members);
    let refused = agent.wait_for("the attacker's refused connect", WAIT, |v| {
        v["type"] == "connect" && v["netns"] == private && v["dst"] == members[3].to_string()
    });
    assert_eq!(refused["trusted"], false, "{refused}");
    assert_eq!(
        refused["role"], "proxy",
        "it is a pool member's address: {refused}"
    );
    assert_eq!(refused["outcome"], "refused");
    // Give any (wrong) decision time to appear and reach HAProxy.
    let lines = agent.collect_for(Duration::from_secs(2)).to_vec();
    let from_attacker: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "connect" && l["netns"] == private)
        .collect();
    assert_eq!(
        from_attacker.len(),
        members.len() * 3,
        "every attempt reported: {from_attacker:?}"
    );
    assert!(from_attacker.iter().all(|l| l["trusted"] == false));
    for m in &members {
        assert!(
            evictions_of(&lines, &m.to_string()).is_empty(),
            "{m} evicted by an unprivileged user"
        );
    }
    assert!(
        haproxy.admin_states().iter().all(|(_, state)| *state == 0),
        "HAProxy touched: {:?}",
        haproxy.admin_states()
    );

    // Control: the same refusal from a root-created namespace is evidence.
    let member = members[0];
    ns.run("scraper", move || {
        TcpStream::connect(member).expect_err("refused in the root-created namespace");
    });
    let evict = agent.wait_for("evict from trusted evidence", WAIT, |v| {
        v["type"] == "evict" && v["dst"] == member.to_string()
    });
    assert_eq!(evict["trigger"]["netns"], ns.inode, "{evict}");
    haproxy.wait_for_maint("s0", true, WAIT, &agent, &[]);
    let (ok, lines) = agent.stop();
    assert!(ok);
    let trusted = lines
        .iter()
        .find(|l| {
            l["type"] == "connect" && l["netns"] == ns.inode && l["dst"] == member.to_string()
        })
        .expect("the control connect");
    assert_eq!(trusted["trusted"], true, "{trusted}");
}

#[test]
fn a_namespace_refusing_its_own_loopback_never_evicts_the_hosts_member() {
    require_root();
    let ns = Netns::new("lo");
    let host = TcpListener::bind("127.0.0.1:0").expect("bind on the host");
    let member = host.local_addr().expect("addr");
    let dir = scratch_dir("lo");
    let pool = dir.join("pool.txt");
    std::fs::write(&pool, format!("{member}\n")).expect("pool");
    let config = write_config(&dir, format!("[policy]\n{OPEN_GUARDS}"));
    let mut agent = Agent::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--pool",
        pool.to_str().expect("utf-8"),
    ]);
    let (_, tid) = ns.run("container-app", move || {
        for _ in 0..3 {
            TcpStream::connect(member).expect_err("nothing listens in the namespace");
        }
    });
    let trap = agent.wait_for("localhost_trap", WAIT, |v| {
        v["type"] == "diagnosis" && v["kind"] == "localhost_trap" && v["dst"] == member.to_string()
    });
    assert_eq!(
        (&trap["netns"], &trap["pid"]),
        (&ns.inode.into(), &tid.into())
    );
    assert_eq!(trap["trusted"], true, "a root-created namespace: {trap}");
    // The host's member still answers, and nothing of the namespace's refusals counts.
    TcpStream::connect(member).expect("the host's member listens");
    let lines = agent.collect_for(Duration::from_secs(1)).to_vec();
    assert!(
        evictions_of(&lines, &member.to_string()).is_empty(),
        "the host's member was evicted"
    );
    let connects: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["type"] == "connect" && l["netns"] == ns.inode && l["dst"] == member.to_string()
        })
        .collect();
    assert_eq!(connects.len(), 3);
    assert!(
        connects
            .iter()
            .all(|c| c["role"] == "target" && c["trusted"] == true),
        "another namespace's loopback is its own destination: {connects:?}"
    );

    // The same destination refused in the host's namespace: evicted as before.
    drop(host);
    TcpStream::connect(member).expect_err("refused on the host now");
    let evict = agent.wait_for("evict of the host's member", WAIT, |v| {
        v["type"] == "evict" && v["dst"] == member.to_string()
    });
    assert!(
        evict.get("netns").is_none(),
        "the host's own destination: {evict}"
    );
    assert_eq!(evict["role"], "proxy");
    let (ok, lines) = agent.stop();
    assert!(ok);
    assert_eq!(evictions_of(&lines, &member.to_string()).len(), 1);
}

/// A cgroup v2 directory created by the test (removed on drop).
struct TestCgroup {
    dir: PathBuf,
    /// The path inside the hierarchy, as connmon reports it.
    path: String,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("a cgroup v2 hierarchy is mounted");
        let path = format!("/connmon-test-{}/{name}", std::process::id());
        let dir = mount.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("create the test cgroup");
        TestCgroup { dir, path }
    }

    /// Runs `command` in this cgroup (the shell moves itself, then execs).
    fn run(&self, command: &str) -> String {
        let procs = self.dir.join("cgroup.procs");
        sh(&[
            "sh",
            "-c",
            &format!("echo $$ > {} && exec {command}", procs.display()),
        ])
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn refuse_from(ns: &Netns, dst: SocketAddr) {
    ns.run("scraper", move || {
        TcpStream::connect(dst).expect_err("refused");
    });
}

#[test]
fn allow_lists_cgroup_attribution_and_a_reloaded_scope() {
    require_root();
    let listed = Netns::new("ok");
    let other = Netns::new("no");
    let id = "c0ffee".repeat(10) + "c0ff";
    let cgroup = TestCgroup::new(&format!("docker-{id}.scope"));
    let parent = cgroup.path.rsplit_once('/').expect("parent").0.to_owned();
    let dir = scratch_dir("allow");
    let config = dir.join("connmon.toml");
    let write_scope = |scope: &str| {
        std::fs::write(
            &config,
            format!("[policy]\n{OPEN_GUARDS}\n[policy.evidence]\n{scope}"),
        )
        .expect("config");
    };
    write_scope(&format!(
        "netns = [\"{}\"]\ncgroups = [\"{parent}\"]\n",
        listed.path().display()
    ));
    let mut agent = Agent::start(&["--config", config.to_str().expect("utf-8")]);
    let port = |ns: &Netns| -> SocketAddr {
        let (p, _) = ns.run("probe", || closed_port(LOCAL_V4));
        format!("{LOCAL_V4}:{p}").parse().expect("addr")
    };
    // A connect from `ns` refused by a free port: the port.
    let refused = |ns: &Netns| {
        let dst = port(ns);
        refuse_from(ns, dst);
        dst
    };

    // A listed namespace moves verdicts.
    let a = refused(&listed);
    agent.wait_for("evict from the listed namespace", WAIT, |v| {
        is_about(v, "evict", a)
    });

    // An unlisted namespace (root-created, so trusted by owner) does not.
    let b = refused(&other);
    let c = agent.wait_for("the unlisted connect", WAIT, |v| is_about(v, "connect", b));
    assert_eq!(c["trusted"], false, "{c}");

    // The same namespace, from a process in a listed cgroup: attributed and evidence.
    let c_dst = port(&other);
    cgroup.run(&format!(
        "ip netns exec {} python3 -c 'import socket\ntry: socket.create_connection((\"{}\", {}))\nexcept ConnectionRefusedError: pass'",
        other.name,
        c_dst.ip(),
        c_dst.port()
    ));
    let connect = agent.wait_for("the connect from the test cgroup", WAIT, |v| {
        is_about(v, "connect", c_dst)
    });
    assert_eq!(connect["cgroup"], cgroup.path, "{connect}");
    assert_eq!(connect["container"], id, "{connect}");
    assert_eq!(connect["trusted"], true, "{connect}");
    assert!(connect.get("pod_uid").is_none(), "{connect}");
    let evict = agent.wait_for("evict from the listed cgroup", WAIT, |v| {
        is_about(v, "evict", c_dst)
    });
    assert_eq!(evict["trigger"]["cgroup"], cgroup.path, "{evict}");
    assert_eq!(evict["trigger"]["container"], id, "{evict}");
    assert_eq!(evict["trigger"]["comm"], "python3", "{evict}");

    // SIGHUP: now only the other namespace is listed.
    write_scope(&format!("netns = [\"{}\"]\n", other.path().display()));
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("evidence scope reloaded", Duration::from_secs(5));
    let d = refused(&other);
    agent.wait_for("evict after the reload", WAIT, |v| is_about(v, "evict", d));
    let e = refused(&listed);
    agent.wait_for("the no longer listed connect", WAIT, |v| {
        is_about(v, "connect", e) && v["trusted"] == false
    });

    // A reload naming a namespace that does not exist keeps the scope in force.
    write_scope("netns = [\"/run/netns/connmon-no-such-namespace\"]\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for_stderr("keeping the current evidence scope", Duration::from_secs(5));
    let f = refused(&other);
    agent.wait_for("evict under the kept scope", WAIT, |v| {
        is_about(v, "evict", f)
    });
    let (ok, lines) = agent.stop();
    assert!(ok);
    for never in [b, e] {
        assert!(
            evictions_of(&lines, &never.to_string()).is_empty(),
            "{never} evicted from outside the scope"
        );
    }
}

#[test]
fn an_invalid_evidence_section_stops_the_agent_with_a_clear_error() {
    require_root();
    let dir = scratch_dir("badscope");
    let config = write_config(
        &dir,
        "[policy.evidence]\nnetns = [\"/run/netns/connmon-no-such-namespace\"]\n",
    );
    let out = Command::new(connmon_integration::connmon_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .arg("--socket")
        .arg(dir.join("connmon.sock"))
        .output()
        .expect("run connmon");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "policy.evidence.netns[0] = \"/run/netns/connmon-no-such-namespace\": cannot open it"
        ),
        "{stderr}"
    );
}

//! A real HAProxy (the Debian package) inside a test's network namespace, driven and read
//! only through its runtime API (`show servers state`): the HAProxy adapter's tests and
//! the trusted-evidence tests check connmon's decisions where HAProxy keeps them.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Agent, Netns, strip_ansi};

/// `srv_admin_state` bit of `set server … state maint`.
pub const FORCED_MAINT: u32 = 0x01;
/// How long HAProxy may take to answer on its stats socket after it starts: generous,
/// because the kernel matrix runs the tests on an emulated CPU (the wait ends as soon as
/// it answers).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A `haproxy -db` (foreground) process inside a namespace, killed on drop.
pub struct Haproxy {
    child: Child,
    /// The runtime API's Unix socket (admin level).
    pub socket: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// Writes `haproxy.cfg` into `dir` and starts HAProxy in `ns`: a stats socket, TCP
    /// mode, no connect retries (one refused connect per request keeps decisions
    /// countable), then `sections` (the frontend and the backend `proxies`).
    pub fn start(ns: &Netns, dir: &Path, sections: &str) -> Self {
        let socket = dir.join("admin.sock");
        let config = format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    retries 0\n    \
             timeout client 10s\n    timeout server 10s\n{sections}",
            socket.display()
        );
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let out = File::create(&log).expect("haproxy log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "haproxy", "-db", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting haproxy (`cargo xtask setup` installs it): {e}"));
        let mut haproxy = Haproxy { child, socket, log };
        let deadline = Instant::now() + START_DEADLINE;
        while haproxy.command("show info").is_none() {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", haproxy.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy's stats socket did not answer within {START_DEADLINE:?}:\n{}",
                haproxy.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        haproxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One runtime-API command, or None if the socket does not answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{line}\n").as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// `(server, srv_admin_state)` of backend `proxies`, by the header's column names.
    pub fn admin_states(&self) -> Vec<(String, u32)> {
        let answer = self
            .command("show servers state proxies")
            .expect("haproxy answers show servers state");
        let mut lines = answer.lines();
        assert_eq!(lines.next(), Some("1"), "servers-state version: {answer}");
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("header")
            .split(' ')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no {name} column"))
        };
        let (name, admin) = (col("srv_name"), col("srv_admin_state"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[name].to_owned(), f[admin].parse().expect("admin state"))
            })
            .collect()
    }

    pub fn admin_state(&self, server: &str) -> u32 {
        self.admin_states()
            .into_iter()
            .find(|(name, _)| name == server)
            .unwrap_or_else(|| panic!("no server {server} in haproxy"))
            .1
    }

    /// Polls until `server`'s MAINT bit is `maint`, checking on every poll that the
    /// servers in `untouched` stay READY. A deadline, not a latency goal.
    pub fn wait_for_maint(
        &self,
        server: &str,
        maint: bool,
        timeout: Duration,
        agent: &Agent,
        untouched: &[&str],
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.admin_states();
            for (name, state) in &states {
                assert!(
                    !untouched.contains(&name.as_str()) || *state == 0,
                    "server {name} was touched: {states:?}"
                );
            }
            let state = states.iter().find(|(n, _)| n == server).expect("server").1;
            // HAProxy shows the state as soon as the adapter's command lands; the adapter
            // counts it (and logs it) once it has read HAProxy's answer. Wait for that
            // too, so that the exit counters the tests read include it.
            let logged = format!("state=\"{}\"", if maint { "maint" } else { "ready" });
            let counted = || {
                strip_ansi(&agent.stderr()).lines().any(|l| {
                    l.contains("haproxy server state set")
                        && l.contains(&format!("proxies/{server}"))
                        && l.contains(&logged)
                })
            };
            if (state & FORCED_MAINT != 0) == maint && counted() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy server {server} not {} within {timeout:?}: {states:?}\nagent stderr:\n{}",
                if maint { "MAINT" } else { "READY" },
                agent.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

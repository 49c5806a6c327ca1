//! Crash-safety of the state file and of the kernel objects (issue #18): the agent is
//! killed with SIGKILL while ejections are being written, and its state file lives on a
//! tmpfs that fills up. On every restart the state file is the previous or the new
//! state — never corrupt, never lost without a log line — and the dead agent's BPF
//! programs and maps are gone from the kernel (connmon pins nothing).

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use connmon_integration::{
    Agent,
    client::{Client, bpf_object_ids, evict_line, wait_bpf_objects_released},
    require_root, scratch_dir, sh,
    timing::{self, patient},
};
use serde_json::{Value, json};

/// How long to wait for what the agent and the kernel do (the socket to appear, the dead
/// agent's programs and maps to be freed, a write to land): a deadline, ended as soon
/// as the state is reached. The kernel frees a killed agent's BPF links, programs and
/// maps through deferred work (RCU callbacks, workqueues) that an overloaded host runs
/// late, so 10 s was not enough at load average 20.
fn wait() -> Duration {
    patient(Duration::from_secs(30))
}
/// Manual ejections long enough that none ends during a test.
const FOR_MS: u64 = 3_600_000;

/// Starts an agent whose only automatic candidates are a documentation address nothing
/// connects to: tracepoints are global, and other tests' refused connects must not add
/// ejections of their own to the state file under test (manual evicts work for any
/// destination).
fn start(state: &Path, socket: &Path) -> Agent {
    let config = socket.with_file_name("connmon.toml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("config dir");
    std::fs::write(&config, "[policy]\npool = [\"192.0.2.1:9\"]\n").expect("config");
    Agent::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--state-file",
        state.to_str().expect("utf-8"),
        "--socket",
        socket.to_str().expect("utf-8"),
    ])
}

/// The ejected destinations in the state file, panicking unless it is a complete state
/// file of the current version.
fn ejected_in(state: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(state)
        .unwrap_or_else(|e| panic!("state file {} unreadable: {e}", state.display()));
    let file: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("state file is corrupt ({e}):\n{text}"));
    assert_eq!(file["version"], 1, "{text}");
    file["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations array:\n{text}"))
        .iter()
        .filter(|d| d["ejection"].is_object())
        .map(|d| d["dst"].as_str().expect("dst").to_owned())
        .collect()
}

/// Temporary files of writes (`.state.json.tmp.PID`) in the state file's directory.
fn temporaries(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.parent().expect("dir"))
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".state.json.tmp."))
        .collect()
}

/// The `restored=N` of the agent's "loaded ejection state" line.
fn restored(agent: &Agent) -> Option<usize> {
    let stderr = agent.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("loaded ejection state"))?;
    let n = line.split("restored=").nth(1)?.split_whitespace().next()?;
    Some(n.parse().expect("restored=N"))
}

/// Entries of the BPF file system (empty when it is not mounted): connmon pins nothing,
/// so a crash must not leave anything there.
fn bpffs_entries() -> BTreeSet<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn kill9(agent: Agent) {
    agent.signal(libc::SIGKILL);
    let (ok, _) = agent.stop();
    assert!(!ok, "the agent survived SIGKILL");
}

#[test]
fn kill_9_while_ejections_are_written_leaves_the_previous_or_the_new_state() {
    require_root();
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 300;
    let dir = scratch_dir("kill9");
    let state = dir.join("state").join("state.json");
    let socket = dir.join("sock").join("connmon.sock");
    let pinned_before = bpffs_entries();
    // The ejections on disk after the previous round, in the order they were made.
    let mut on_disk_before: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let agent = start(&state, &socket);
        if round > 0 {
            assert_eq!(
                restored(&agent),
                Some(on_disk_before.len()),
                "round {round}: the restart did not restore the ejections on disk; stderr:\n{}",
                agent.stderr()
            );
            assert!(
                !agent.stderr().contains("ignoring unusable state file"),
                "{}",
                agent.stderr()
            );
            let left: Vec<String> = temporaries(&state)
                .into_iter()
                .filter(|n| !n.ends_with(&format!(".{}", agent.pid())))
                .collect();
            assert!(
                left.is_empty(),
                "round {round}: temporaries of dead agents left: {left:?}"
            );
        }
        let (programs, maps) = bpf_object_ids(agent.pid());
        assert_eq!(
            programs.len(),
            connmon_integration::expected_programs(&agent),
            "the agent holds every program this kernel needs: {programs:?}"
        );
        assert!(!maps.is_empty(), "the agent holds its maps");

        // A stream of evicts, written in one go; the agent acknowledges them in order and
        // is killed part-way, while its writer thread is busy replacing the file.
        let mut client = Client::connect(&socket, wait());
        let batch: Vec<String> = (0..PER_ROUND)
            .map(|i| format!("10.{}.{}.{}:80", 100 + round, i / 250, i % 250))
            .collect();
        let lines: String = batch.iter().map(|d| evict_line(d, FOR_MS)).collect();
        client.write(lines.as_bytes()).expect("send evicts");
        let kill_after = PER_ROUND / 3 + round * 41;
        let mut acked = 0;
        while acked < kill_after {
            let reply = client.read().expect("reply");
            assert_eq!(reply["type"], "ok", "{reply}");
            acked += 1;
        }
        kill9(agent);
        wait_bpf_objects_released(&programs, &maps, wait());
        assert_eq!(
            bpffs_entries(),
            pinned_before,
            "round {round}: the dead agent left something in /sys/fs/bpf"
        );

        // The file is a state the agent actually was in: what was on disk before, plus
        // a prefix of this round's evicts in the order they were sent (the last ones
        // acknowledged may not have been written yet: a crash loses those, and only
        // those), never anything else.
        let on_disk = ejected_in(&state);
        let n = on_disk.len();
        assert!(
            n >= on_disk_before.len(),
            "round {round}: {n} ejections on disk, {} before",
            on_disk_before.len()
        );
        let expected: Vec<String> = on_disk_before
            .iter()
            .chain(batch.iter())
            .take(n)
            .cloned()
            .collect();
        assert_eq!(
            on_disk,
            expected.iter().cloned().collect::<BTreeSet<_>>(),
            "round {round}: the state file is not a state the agent was in"
        );
        on_disk_before = expected;
    }
    let durable = on_disk_before.len();
    let agent = start(&state, &socket);
    assert_eq!(restored(&agent), Some(durable), "{}", agent.stderr());
    let mut client = Client::connect(&socket, wait());
    let snapshot = client.request(json!({"cmd": "snapshot"}));
    assert_eq!(
        snapshot["ejected"],
        json!(durable),
        "the agent's view after the last restart: {snapshot}"
    );
    let (ok, _) = agent.stop();
    assert!(ok, "a clean stop after the crashes");
    assert_eq!(ejected_in(&state).len(), durable);
    assert!(temporaries(&state).is_empty(), "{:?}", temporaries(&state));
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = scratch_dir("tmpfs");
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            dir.to_str().expect("utf-8"),
        ]);
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes zeros until the file system is full.
fn fill(path: &Path) -> std::fs::File {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = [0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = file.sync_all();
    file
}

fn wait_until(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    let every = Duration::from_millis(50);
    timing::wait_until(timeout, every, ok, || format!("{what} within {timeout:?}"));
}

#[test]
fn a_full_disk_keeps_the_previous_state_file_and_says_so() {
    require_root();
    let fs = Tmpfs::new("256k");
    let state = fs.0.join("state.json");
    let socket = scratch_dir("diskfull").join("sock").join("connmon.sock");
    let first: Vec<String> = (1..=5).map(|i| format!("10.99.0.{i}:80")).collect();
    let later: Vec<String> = (6..=10).map(|i| format!("10.99.0.{i}:80")).collect();

    let agent = start(&state, &socket);
    let mut client = Client::connect(&socket, wait());
    for dst in &first {
        let reply = client.request(json!({"cmd": "evict", "dst": dst, "for_ms": FOR_MS}));
        assert_eq!(reply["type"], "ok", "{reply}");
    }
    let want: BTreeSet<String> = first.iter().cloned().collect();
    wait_until("the first five ejections on disk", wait(), || {
        state.exists() && ejected_in(&state) == want
    });

    let filler = fill(&fs.0.join("filler"));
    for dst in &later {
        let reply = client.request(json!({"cmd": "evict", "dst": dst, "for_ms": FOR_MS}));
        assert_eq!(
            reply["type"], "ok",
            "ejections go on with a full disk: {reply}"
        );
    }
    wait_until(
        "a warning that the state file could not be written",
        wait(),
        || agent.stderr().contains("could not write the state file"),
    );
    assert_eq!(
        ejected_in(&state),
        want,
        "the state file must stay the previous state"
    );
    assert!(
        temporaries(&state).is_empty(),
        "a failed write left {:?}",
        temporaries(&state)
    );
    let warning = agent
        .stderr()
        .lines()
        .find(|l| l.contains("could not write the state file"))
        .map(str::to_owned)
        .expect("warning");
    assert!(
        warning.contains("will not survive a restart") && warning.contains("state.json"),
        "the warning says what is at stake and where: {warning}"
    );
    let (programs, maps) = bpf_object_ids(agent.pid());
    kill9(agent);
    wait_bpf_objects_released(&programs, &maps, wait());

    // Restart with the disk still full: the previous state is restored.
    let agent = start(&state, &socket);
    assert_eq!(restored(&agent), Some(first.len()), "{}", agent.stderr());
    // Space again: the next change is written, with everything the agent knows.
    drop(filler);
    std::fs::remove_file(fs.0.join("filler")).expect("remove filler");
    let mut client = Client::connect(&socket, wait());
    let reply = client.request(json!({"cmd": "evict", "dst": "10.99.0.11:80", "for_ms": FOR_MS}));
    assert_eq!(reply["type"], "ok", "{reply}");
    let mut want = want;
    want.insert("10.99.0.11:80".into());
    wait_until("the new state on disk once there is space", wait(), || {
        ejected_in(&state) == want
    });
    let (ok, _) = agent.stop();
    assert!(ok);
    assert_eq!(ejected_in(&state), want);
    assert!(temporaries(&state).is_empty());
}

//! `cargo xtask kernels`: the kernel matrix. Runs the kernel-facing root integration
//! tests inside other kernels than the host's, because users run distribution LTS kernels
//! (Debian 12: 6.1, backports 6.12), not the developer's.
//!
//! For each kernel:
//! 1. `apt-get download` its Debian package (`linux-image-<release>-unsigned`) and unpack
//!    it with `dpkg-deb -x` into `~/.cache/connmon/kernels/<release>/`. Nothing is
//!    installed: /boot, the bootloader and the host's modules are never touched, and the
//!    host is never rebooted.
//! 2. Boot it under QEMU with virtme-ng (`vng`, from PyPI, in a venv under
//!    `~/.cache/connmon/`), which shares the host's root filesystem read-only (overlays on
//!    /etc, /var, /tmp), so the guest runs the very test executables and `connmon` binary
//!    built on the host. KVM is used only when a probe boot shows it works (on nested
//!    paravirtual hypervisors such as kvm_pvm it does not); otherwise QEMU emulates (TCG).
//! 3. The guest runs each test of [`MATRIX_BINARIES`] on its own (`<exe> --exact NAME`,
//!    bounded by `timeout`) and writes its exit status and log into a results directory
//!    shared read-write (`--rwdir`). vng's own exit status and console are not reliable
//!    (255 and empty here whatever the guest does), so only these files are judged: a test
//!    with no status file counts as failed.
//!
//! One line per kernel is printed: `kernel 6.1.0-57-amd64: N passed, M failed`, then the
//! failed tests with the first lines of their panic.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    build,
    run::is_root,
    setup::{self, Toolchain, run_cmd, say},
};

/// The kernels `cargo xtask test` (and so CI) runs the matrix on, as `uname -r` strings.
/// The Debian package is `linux-image-<release>-unsigned`.
pub(crate) const DEFAULT_KERNELS: &[&str] = &["6.1.0-57-amd64", "6.12.117+deb12-amd64"];

/// The root integration test binaries (`tests/tests/<name>.rs`) that form the kernel
/// matrix: the ones whose result depends on the kernel (tracepoints, BTF, tracefs, socket
/// errors, the ring buffer, the pool policy fed by them). Tests that need services
/// (HAProxy, OTLP collectors, Python clients, ...) or only exercise user-space code
/// (`config`, `socket`) are left to the host run, so the matrix's CI cost does not grow
/// with the suite. Add a binary here only if it tests kernel behaviour.
pub(crate) const MATRIX_BINARIES: &[&str] =
    &["outcomes", "agent", "eviction", "evidence", "hotpath"];

/// The `--smoke` subset: (binary, test name). Attach, and refused (which also fires
/// `tcp_receive_reset` and `inet_sk_error_report`) and established over IPv4 and IPv6.
const SMOKE_TESTS: &[(&str, &str)] = &[
    ("outcomes", "refused_ipv4"),
    ("outcomes", "refused_ipv6"),
    ("outcomes", "established_with_plausible_handshake"),
];

/// virtme-ng version installed into the project venv.
const VIRTME_NG: &str = "1.42";

/// Debian packages the matrix needs, by the command proving each present: QEMU, a static
/// busybox for vng's init, kmod (depmod for the unpacked modules), dpkg-deb, timeout.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("dpkg-deb", "dpkg"),
    ("timeout", "coreutils"),
    ("python3", "python3"),
];

/// Per-test bound inside the guest (like nextest's slow-timeout x terminate-after on the host).
const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a guest may run in all before it is killed.
const GUEST_DEADLINE_FULL: Duration = Duration::from_secs(20 * 60);
const GUEST_DEADLINE_SMOKE: Duration = Duration::from_secs(5 * 60);

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// A kernel to run, as its `uname -r` (e.g. `6.1.0-57-amd64`); repeat for several.
    /// Default: the Debian 12 kernels 6.1 and 6.12 (backports).
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// Run a short subset (attach, refused/established/reset, tracefs): < 2 min per kernel.
    #[arg(long)]
    pub smoke: bool,
    /// Only the tests whose `binary::name` contains this (e.g. `eviction::an_ejection`).
    #[arg(long)]
    pub filter: Option<String>,
}

/// Result of the matrix over all kernels.
#[derive(Debug, Default)]
pub(crate) struct MatrixResult {
    pub passed: usize,
    pub failed: usize,
}

/// Result of one kernel.
#[derive(Debug)]
struct KernelResult {
    release: String,
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    note: Option<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the kernel matrix runs root integration tests inside QEMU: run `sudo -E cargo xtask kernels`"
        );
    }
    let toolchain = setup::run(&setup::Options::default())?;
    let kernels: Vec<String> = if opts.kernels.is_empty() {
        DEFAULT_KERNELS.iter().map(|k| (*k).to_owned()).collect()
    } else {
        opts.kernels.clone()
    };
    let result = run_matrix(&toolchain, &kernels, opts.smoke, opts.filter.as_deref())?;
    eprintln!(
        "kernel matrix: {} passed, {} failed",
        result.passed, result.failed
    );
    if result.failed > 0 {
        bail!("{} test(s) failed in the kernel matrix", result.failed);
    }
    Ok(())
}

/// Installs what the matrix needs (idempotent): Debian packages and virtme-ng in a venv.
/// Returns the `vng` executable.
pub(crate) fn ensure_tools() -> anyhow::Result<PathBuf> {
    setup::ensure_debian(PACKAGES)?;
    let venv = setup::cache_dir().join(format!("virtme-ng-{VIRTME_NG}"));
    let vng = venv.join("bin/vng");
    let works = Command::new(&vng).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VIRTME_NG)
    });
    if works {
        return Ok(vng);
    }
    say(format!(
        "installing virtme-ng {VIRTME_NG} (boots the matrix kernels under QEMU) into {}",
        venv.display()
    ));
    let _ = fs::remove_dir_all(&venv);
    if run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv)).is_err() {
        // Debian splits `venv` (ensurepip) into its own package.
        let _ = fs::remove_dir_all(&venv);
        setup::apt_install(&["python3-venv"])?;
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG}")),
    )?;
    Ok(vng)
}

/// Builds the binaries, runs every kernel and prints one line per kernel.
pub(crate) fn run_matrix(
    toolchain: &Toolchain,
    kernels: &[String],
    smoke: bool,
    filter: Option<&str>,
) -> anyhow::Result<MatrixResult> {
    let vng = ensure_tools()?;
    // The release agent, as users run it: the debug build's BTF parsing alone takes many
    // seconds under emulation.
    let agent = build::build_agent(toolchain, true)?;
    let binaries = build_test_binaries(toolchain)?;
    let mut plan = plan_tests(&binaries, smoke)?;
    if let Some(filter) = filter {
        plan.retain(|t| t.id().contains(filter));
        if plan.is_empty() {
            bail!("no matrix test matches {filter:?}");
        }
    }
    let out_root = build::workspace_root().join("target/kernels");
    let mut accel: Option<Accel> = None;
    let mut results = Vec::new();
    for release in kernels {
        let vmlinuz = ensure_kernel(release)?;
        let accel = *accel.get_or_insert_with(|| {
            let probe = Instant::now();
            let accel = detect_accel(&vng, &vmlinuz, &out_root);
            say(format!(
                "KVM probe: {} ({:.0} s)",
                if accel == Accel::Kvm {
                    "works"
                } else {
                    "does not boot a guest"
                },
                probe.elapsed().as_secs_f64()
            ));
            accel
        });
        say(format!(
            "kernel {release}: booting under QEMU ({}), {} test(s){}",
            accel.describe(),
            plan.len(),
            if smoke { " (smoke)" } else { "" }
        ));
        let started = Instant::now();
        let result = run_kernel(
            &vng, accel, release, &vmlinuz, &agent, &plan, &out_root, smoke,
        )?;
        say(format!(
            "kernel {release}: guest finished in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
        results.push(result);
    }
    let mut total = MatrixResult::default();
    for r in &results {
        eprintln!(
            "kernel {}: {} passed, {} failed{}",
            r.release,
            r.passed.len(),
            r.failed.len(),
            r.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        for (name, why) in &r.failed {
            eprintln!("    FAILED {name}");
            for line in why.lines() {
                eprintln!("        {line}");
            }
        }
        total.passed += r.passed.len();
        total.failed += r.failed.len();
    }
    Ok(total)
}

/// A test executable of the matrix, by its target name.
#[derive(Debug)]
struct TestBinary {
    name: String,
    exe: PathBuf,
}

/// Builds the integration test executables with the same arguments as the host's
/// `cargo nextest run` (so nothing is rebuilt) and returns the matrix's ones.
fn build_test_binaries(toolchain: &Toolchain) -> anyhow::Result<Vec<TestBinary>> {
    let root = build::workspace_root();
    let mut child = Command::new("cargo")
        .current_dir(&root)
        .args([
            "test",
            "--no-run",
            "--workspace",
            "--exclude",
            "monitor-ebpf",
            "--message-format=json-render-diagnostics",
        ])
        .env("PATH", toolchain.path_env())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let name = msg["target"]["name"].as_str().unwrap_or_default();
        let is_integration = msg["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("connmon-integration"));
        let is_test_target = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if is_integration && is_test_target && MATRIX_BINARIES.contains(&name) {
            let exe = msg["executable"]
                .as_str()
                .context("test artifact without an executable")?;
            found.push(TestBinary {
                name: name.to_owned(),
                exe: PathBuf::from(exe),
            });
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("building the integration tests failed ({status})");
    }
    for want in MATRIX_BINARIES {
        if !found.iter().any(|b| b.name == *want) {
            bail!("integration test binary `{want}` (kernels::MATRIX_BINARIES) was not built");
        }
    }
    Ok(found)
}

/// One test to run in the guest.
#[derive(Debug, Clone)]
struct PlannedTest {
    binary: String,
    exe: PathBuf,
    test: String,
}

impl PlannedTest {
    fn id(&self) -> String {
        format!("{}::{}", self.binary, self.test)
    }
    /// File stem of its result files.
    fn stem(&self) -> String {
        format!("{}.{}", self.binary, self.test)
    }
}

/// Lists the tests of each matrix binary (on the host: listing runs nothing) and keeps
/// the smoke subset if asked.
fn plan_tests(binaries: &[TestBinary], smoke: bool) -> anyhow::Result<Vec<PlannedTest>> {
    let list = |exe: &Path, ignored: bool| -> anyhow::Result<Vec<String>> {
        let mut cmd = Command::new(exe);
        cmd.args(["--list", "--format", "terse"]);
        if ignored {
            cmd.arg("--ignored");
        }
        let out = cmd
            .output()
            .with_context(|| format!("listing the tests of {}", exe.display()))?;
        if !out.status.success() {
            bail!("{} --list failed", exe.display());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test").map(str::to_owned))
            .collect())
    };
    let mut plan = Vec::new();
    for bin in binaries {
        let ignored = list(&bin.exe, true)?;
        for test in list(&bin.exe, false)? {
            if ignored.contains(&test) {
                continue;
            }
            if smoke && !SMOKE_TESTS.contains(&(bin.name.as_str(), test.as_str())) {
                continue;
            }
            plan.push(PlannedTest {
                binary: bin.name.clone(),
                exe: bin.exe.clone(),
                test,
            });
        }
    }
    if smoke {
        for (binary, test) in SMOKE_TESTS {
            if !plan.iter().any(|p| p.binary == *binary && p.test == *test) {
                bail!("smoke test {binary}::{test} (kernels::SMOKE_TESTS) does not exist");
            }
        }
    }
    Ok(plan)
}

/// Where the unpacked kernels are kept.
fn kernel_cache() -> PathBuf {
    setup::cache_dir().join("kernels")
}

/// Downloads and unpacks the Debian package of `release` unless cached; returns its vmlinuz.
fn ensure_kernel(release: &str) -> anyhow::Result<PathBuf> {
    if release.is_empty() || release.contains('/') || release.starts_with('.') {
        bail!("{release:?} is not a kernel release (e.g. 6.1.0-57-amd64)");
    }
    let dir = kernel_cache().join(release);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    if vmlinuz.is_file() && dir.join(format!("lib/modules/{release}")).is_dir() {
        return Ok(vmlinuz);
    }
    let package = format!("linux-image-{release}-unsigned");
    let known = |pkg: &str| {
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", pkg])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    };
    if !known(&package) {
        say("refreshing apt's package lists (apt-get update)");
        run_cmd(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update", "-q"]))?;
        if !known(&package) {
            bail!(
                "Debian has no package {package}: name kernels by their `uname -r` as Debian ships them (`apt-cache search linux-image-` lists them)"
            );
        }
    }
    say(format!(
        "downloading {package} (unpacked into {}, never installed)",
        dir.display()
    ));
    let staging = kernel_cache().join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = (|| -> anyhow::Result<()> {
        run_cmd(
            Command::new("apt-get")
                .current_dir(&staging)
                // The cache is under root's home, which apt's `_apt` user cannot enter.
                .args(["-o", "APT::Sandbox::User=root", "download", "-q", &package]),
        )?;
        let deb = crate::setup::file_with_extension(&staging, "deb", "apt-get download")?;
        let tree = staging.join("tree");
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        if !tree.join(format!("boot/vmlinuz-{release}")).is_file() {
            bail!("{package} has no boot/vmlinuz-{release}");
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tree, &dir)
            .with_context(|| format!("moving the kernel to {}", dir.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result?;
    Ok(vmlinuz)
}

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn describe(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG emulation: KVM is absent or cannot run this guest",
        }
    }
}

/// Uses KVM only if a probe boot with it gets as far as running a command in the guest.
/// `/dev/kvm` existing is not enough: nested paravirtual hypervisors (kvm_pvm) expose
/// it, yet QEMU fails to set up the vCPU or the guest dies in instruction emulation.
fn detect_accel(vng: &Path, vmlinuz: &Path, out_root: &Path) -> Accel {
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Accel::Tcg;
    }
    let dir = out_root.join("kvm-probe");
    let _ = fs::remove_dir_all(&dir);
    if fs::create_dir_all(&dir).is_err() {
        return Accel::Tcg;
    }
    let marker = dir.join("booted");
    let script = format!("echo ok > '{}'", marker.display());
    let mut cmd = vng_command(vng, Accel::Kvm, vmlinuz, &dir, &script);
    let _ = run_bounded(&mut cmd, &dir.join("vng.log"), Duration::from_secs(90));
    let works = fs::read_to_string(&marker).is_ok_and(|s| s.trim() == "ok");
    let _ = fs::remove_dir_all(&dir);
    if works { Accel::Kvm } else { Accel::Tcg }
}

fn vng_command(vng: &Path, accel: Accel, vmlinuz: &Path, rwdir: &Path, exec: &str) -> Command {
    let mut cmd = Command::new(vng);
    // vng runs its sibling `virtme-run` from PATH.
    let mut path = vec![vng.parent().unwrap_or(Path::new("/")).to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    if let Ok(joined) = std::env::join_paths(path) {
        cmd.env("PATH", joined);
    }
    cmd.arg("--run")
        .arg(vmlinuz)
        .args(["--user", "root", "--cpus", "2", "--memory", "2G"])
        // The guest's console goes to the log: the only clue when a boot fails.
        .arg("--verbose")
        .arg(format!("--rwdir={}", rwdir.display()))
        .arg(format!("--cwd={}", build::workspace_root().display()))
        .args(["--exec", exec]);
    if accel == Accel::Tcg {
        cmd.arg("--disable-kvm");
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` with its output in `log`, killing it and its descendants (QEMU) after
/// `deadline`. It stays in xtask's process group, so Ctrl-C stops QEMU too.
/// Returns whether it ended by itself.
fn run_bounded(cmd: &mut Command, log: &Path, deadline: Duration) -> anyhow::Result<bool> {
    let log_file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = cmd
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if start.elapsed() > deadline {
            kill_tree(child.id());
            let _ = child.wait();
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILLs `pid` and every descendant (found through /proc/*/stat), children first.
fn kill_tree(pid: u32) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Fields after the parenthesised command: state, ppid, ...
            if let Ok(stat) = fs::read_to_string(entry.path().join("stat"))
                && let Some((_, rest)) = stat.rsplit_once(')')
                && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok())
            {
                parents.push((p, ppid));
            }
        }
    }
    fn visit(pid: u32, parents: &[(u32, u32)]) {
        for &(child, _) in parents.iter().filter(|(_, pp)| *pp == pid) {
            visit(child, parents);
        }
        // pid is our own descendant.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    visit(pid, &parents);
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the guest runs: each test on its own, its status and log into `out`.
fn guest_script(plan: &[PlannedTest], agent: &Path, out: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let mut s = String::from(
        "#!/bin/bash\n# Written by `cargo xtask kernels`; runs inside the guest.\nset -u\n",
    );
    s += &format!("OUT={}\n", q(out));
    s += "uname -r > \"$OUT/uname\"\n";
    s += &format!("export CONNMON_BIN={}\n", q(agent));
    s += "export RUST_BACKTRACE=1 CONNMON_KERNEL_MATRIX=1\n";
    s += &format!("cd {}\n", q(&build::workspace_root().join("tests")));
    for t in plan {
        s += &format!(
            "echo {id} > \"$OUT/current\"\ntimeout -k 10 {secs} {exe} --exact {test} --test-threads=1 > \"$OUT/{stem}.log\" 2>&1\necho $? > \"$OUT/{stem}.rc\"\n",
            id = shell_quote(&t.id()),
            secs = TEST_TIMEOUT.as_secs(),
            exe = q(&t.exe),
            test = shell_quote(&t.test),
            stem = t.stem(),
        );
    }
    s += "echo done > \"$OUT/done\"\n";
    s
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn run_kernel(
    vng: &Path,
    accel: Accel,
    release: &str,
    vmlinuz: &Path,
    agent: &Path,
    plan: &[PlannedTest],
    out_root: &Path,
    smoke: bool,
) -> anyhow::Result<KernelResult> {
    let out = out_root.join(release);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = out.join("run.sh");
    fs::write(&script, guest_script(plan, agent, &out))
        .with_context(|| format!("writing {}", script.display()))?;
    let exec = format!("bash {}", shell_quote(&script.display().to_string()));
    let deadline = if smoke {
        GUEST_DEADLINE_SMOKE
    } else {
        GUEST_DEADLINE_FULL
    };
    let mut finished = false;
    let mut booted = false;
    // A second boot only if the first never reached the script (an emulated boot can
    // fail for reasons of its own); tests are never retried.
    for attempt in 1..=2 {
        let mut cmd = vng_command(vng, accel, vmlinuz, &out, &exec);
        let log = out.join(format!("vng-{attempt}.log"));
        finished = run_bounded(&mut cmd, &log, deadline)?;
        booted = out.join("uname").is_file();
        if booted {
            break;
        }
        say(format!(
            "kernel {release}: the guest never started the tests (boot {attempt}; console in {})",
            log.display()
        ));
    }
    let mut note = None;
    if !booted {
        note = Some(format!(
            "the guest never ran the tests: see {}",
            out.join("vng-2.log").display()
        ));
    } else if !finished {
        note = Some(format!(
            "guest killed after {} s, during {}",
            deadline.as_secs(),
            fs::read_to_string(out.join("current"))
                .unwrap_or_default()
                .trim()
        ));
    } else if let Ok(seen) = fs::read_to_string(out.join("uname"))
        && seen.trim() != release
    {
        bail!("the guest ran kernel {} instead of {release}", seen.trim());
    }
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for t in plan {
        let rc = fs::read_to_string(out.join(format!("{}.rc", t.stem())));
        let log = out.join(format!("{}.log", t.stem()));
        match rc.as_deref().map(str::trim) {
            Ok("0") => passed.push(t.id()),
            Ok(code) => failed.push((t.id(), failure_excerpt(&log, code))),
            Err(_) => failed.push((t.id(), "did not run".to_owned())),
        }
    }
    Ok(KernelResult {
        release: release.to_owned(),
        passed,
        failed,
        note,
    })
}

/// The panic message of a failed test's log (its first lines), or the exit code.
fn failure_excerpt(log: &Path, code: &str) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .take(8)
        .collect();
    if lines.is_empty() {
        lines = text.lines().rev().take(6).collect();
        lines.reverse();
    }
    let reason = if code == "124" || code == "137" {
        format!("timed out after {} s", TEST_TIMEOUT.as_secs())
    } else {
        format!("exit status {code}")
    };
    format!("{reason}; log {}\n{}", log.display(), lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_tests_belong_to_matrix_binaries() {
        for (binary, _) in SMOKE_TESTS {
            assert!(
                MATRIX_BINARIES.contains(binary),
                "smoke binary {binary} is not in MATRIX_BINARIES"
            );
        }
    }

    #[test]
    fn guest_script_runs_each_test_alone_and_records_its_status() {
        let plan = vec![PlannedTest {
            binary: "outcomes".into(),
            exe: PathBuf::from("/t/outcomes-abc"),
            test: "refused_ipv4".into(),
        }];
        let s = guest_script(&plan, Path::new("/t/connmon"), Path::new("/o"));
        assert!(
            s.contains("'/t/outcomes-abc' --exact 'refused_ipv4' --test-threads=1 > \"$OUT/outcomes.refused_ipv4.log\""),
            "{s}"
        );
        assert!(
            s.contains("echo $? > \"$OUT/outcomes.refused_ipv4.rc\""),
            "{s}"
        );
        assert!(s.contains("export CONNMON_BIN='/t/connmon'"), "{s}");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}

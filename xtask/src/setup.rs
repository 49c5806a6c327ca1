//! Idempotent set-up of everything outside the repository that builds and tests need.
//!
//! - the nightly toolchain pinned in Cargo.toml (`[workspace.metadata.connmon] nightly`,
//!   e.g. `nightly-2026-05-20`) with `rust-src` (aya-build compiles the eBPF crate with
//!   `-Z build-std=core`) and `rustfmt` (`cargo +nightly-2026-05-20 fmt`);
//! - a `bpf-linker` whose LLVM major equals that nightly's. No Debian package ships LLVM
//!   22, so it is built against the nightly's own `libLLVM` (its C API is exported) and
//!   cached under `~/.cache/connmon/`, keyed by the pinned toolchain and its commit: a bump
//!   rebuilds it;
//! - `cargo-nextest` (the test runner) and the Debian packages the integration tests use;
//! - for the kernel matrix (kernels.rs): QEMU, busybox-static, kmod and virtme-ng (PyPI,
//!   pinned) in a venv under `~/.cache/connmon/`;
//! - the Python tests' virtualenv (`pyenv`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(clap::Args, Default)]
pub(crate) struct Options {
    /// Skip installing Debian packages (the tests need iproute2 and python3).
    #[arg(long)]
    pub no_packages: bool,
}

/// What later steps need from set-up.
pub(crate) struct Toolchain {
    /// Directory holding the matching `bpf-linker`; prepend it to PATH.
    pub bpf_linker_dir: PathBuf,
}

impl Toolchain {
    /// PATH with the bpf-linker directory first.
    pub(crate) fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.bpf_linker_dir.clone()];
        if let Some(path) = env::var_os("PATH") {
            paths.extend(env::split_paths(&path));
        }
        env::join_paths(paths).expect("PATH entries contain no separator")
    }
}

pub(crate) fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// Runs a command, failing with its command line if it fails.
pub(crate) fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&stdout(cmd)?).into_owned())
}

/// Runs `cmd` and returns its stdout; an error (with its stderr) if it fails.
pub(crate) fn stdout(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<Toolchain> {
    let started = std::time::Instant::now();
    let of = if opts.no_packages { 3 } else { 5 };
    let nightly = pinned_nightly()?;
    step(1, of, "pinned nightly toolchain with rust-src", || {
        ensure_nightly(&nightly)
    })?;
    let bpf_linker_dir = step(2, of, "bpf-linker for nightly's LLVM", || {
        ensure_bpf_linker(&nightly)
    })?;
    step(3, of, "cargo-nextest", ensure_nextest)?;
    if !opts.no_packages {
        step(4, of, "Debian packages for the tests", ensure_packages)?;
        step(
            5,
            of,
            "kernel-matrix tools (virtme-ng)",
            crate::kernels::ensure_tools,
        )?;
    }
    if started.elapsed() > SLOW_STEP {
        say(format!(
            "set-up done in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
    }
    crate::pyenv::ensure_test_venv()?;
    Ok(Toolchain { bpf_linker_dir })
}

/// The pinned nightly, `[workspace.metadata.connmon] nightly` in the workspace's
/// Cargo.toml (monitor/build.rs reads the same key for aya-build).
pub(crate) fn pinned_nightly() -> anyhow::Result<String> {
    let manifest = crate::build::workspace_root().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    parse_pinned_nightly(&text).with_context(|| {
        format!(
            "{} has no `nightly = \"nightly-YYYY-MM-DD\"` under [workspace.metadata.connmon]",
            manifest.display()
        )
    })
}

fn parse_pinned_nightly(manifest: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == "[workspace.metadata.connmon]";
        } else if in_section
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "nightly"
        {
            let value = value.trim().trim_matches('"');
            return value.starts_with("nightly-").then(|| value.to_owned());
        }
    }
    None
}

/// A set-up step that takes longer than this reports how long it took.
const SLOW_STEP: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs set-up step `n` of `of`; a failure names the step, a slow step its duration
/// (the steps themselves say what they install, and only when they install something).
fn step<T>(
    n: usize,
    of: usize,
    what: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    let out = f().with_context(|| format!("set-up step {n}/{of} ({what})"))?;
    if started.elapsed() > SLOW_STEP {
        say(format!(
            "set-up {n}/{of}: {what} ready after {:.0} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(out)
}

fn nightly_sysroot(nightly: &str) -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args([&format!("+{nightly}"), "--print", "sysroot"]))?.trim(),
    ))
}

fn ensure_nightly(nightly: &str) -> anyhow::Result<()> {
    let have_nightly = Command::new("rustc")
        .args([&format!("+{nightly}"), "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nightly {
        say(format!(
            "installing the pinned {nightly} with rust-src and rustfmt (the eBPF crate is built with -Z build-std)"
        ));
        return run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "rustfmt",
        ]));
    }
    let sysroot = nightly_sysroot(nightly)?;
    let mut missing = Vec::new();
    if !sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        missing.push("rust-src");
    }
    if !sysroot.join("bin/rustfmt").is_file() {
        missing.push("rustfmt");
    }
    if !missing.is_empty() {
        say(format!(
            "adding {} to {nightly} (the eBPF crate is built with -Z build-std)",
            missing.join(" and ")
        ));
        run_cmd(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", nightly])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// The nightly's identity: (release, short commit hash, LLVM major).
fn nightly_identity(nightly: &str) -> anyhow::Result<(String, String, String)> {
    let vv = output(Command::new("rustc").args([&format!("+{nightly}"), "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .with_context(|| format!("`rustc +{nightly} -vV` has no `{name}` line"))
    };
    let release = field("release:")?;
    let commit = field("commit-hash:")?.chars().take(9).collect();
    let llvm = field("LLVM version:")?;
    let major = llvm.split('.').next().unwrap_or_default().to_owned();
    Ok((release, commit, major))
}

fn ensure_bpf_linker(nightly: &str) -> anyhow::Result<PathBuf> {
    let (release, commit, llvm_major) = nightly_identity(nightly)?;
    // Keyed by the toolchain's name too: the binary's rpath points into its directory.
    let root = cache_dir().join(format!(
        "bpf-linker-{nightly}-{release}-{commit}-llvm{llvm_major}"
    ));
    let bin = root.join("bin");
    if works(&bin.join("bpf-linker")) {
        return Ok(bin);
    }
    let sysroot_lib = nightly_sysroot(nightly)?.join("lib");
    let dylib = find_llvm_dylib(&sysroot_lib, &llvm_major)?;
    say(format!(
        "building bpf-linker 0.13.0 against nightly's own LLVM {llvm_major} ({dylib}): rustc +nightly emits LLVM {llvm_major} bitcode and no system LLVM {llvm_major} is available; this takes about a minute, once"
    ));
    let rustflags = format!(
        "-L {lib} -l dylib={dylib} -C link-arg=-Wl,-rpath,{lib}",
        lib = sysroot_lib.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
            .arg("--root")
            .arg(&root)
            .env("RUSTFLAGS", rustflags),
    )?;
    if !works(&bin.join("bpf-linker")) {
        bail!("built bpf-linker at {} but it does not run", bin.display());
    }
    Ok(bin)
}

fn works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The name to pass to `-l dylib=` for nightly's libLLVM, e.g. `LLVM-22-rust-1.97.0-nightly`.
fn find_llvm_dylib(lib: &Path, major: &str) -> anyhow::Result<String> {
    let prefix = format!("libLLVM-{major}-rust-");
    for entry in std::fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so"))
            && name.starts_with(&prefix)
        {
            return Ok(stem.to_owned());
        }
    }
    bail!(
        "no {prefix}*.so in {}: cannot build bpf-linker against nightly's LLVM",
        lib.display()
    )
}

/// The toolchain every nightly-only step runs with (`cargo +<this>`): the eBPF build's
/// and cargo-fuzz's — the pinned one ([`pinned_nightly`]).
pub(crate) fn nightly_toolchain() -> anyhow::Result<String> {
    pinned_nightly()
}

/// cargo-fuzz, pinned (`cargo xtask fuzz` and the fuzzing step of `cargo xtask test`).
pub(crate) fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let want = crate::fuzz::CARGO_FUZZ_VERSION;
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(want));
    if installed {
        return Ok(());
    }
    say(format!(
        "installing cargo-fuzz {want} (the fuzz targets' runner)"
    ));
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", want]))
}

fn ensure_nextest() -> anyhow::Result<()> {
    if Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    say("installing cargo-nextest (the test runner)");
    run_cmd(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))
}

/// Debian packages the integration tests use, by the command that proves each present.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("haproxy", "haproxy"),
    // Service tests (tests/tests/service.rs): the .deb, the image, systemd in a
    // container (podman with runc: crun refuses this host's hybrid cgroups), the unit's
    // offline checks, and the least-privilege runs.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("podman", "podman"),
    ("runc", "runc"),
    ("systemd-analyze", "systemd"),
    // `setpriv`/`unshare`: the evidence tests act as an unprivileged user in a private
    // user + network namespace (util-linux is Essential on Debian; named for clarity).
    ("setpriv", "util-linux"),
    // tests/tests/prometheus.rs: a real Prometheus scrapes `connmon run --metrics`.
    ("prometheus", "prometheus"),
    // tests/tests/top.rs: drives `connmon top` in a terminal.
    ("tmux", "tmux"),
    // clients/python tests and the scraper bench: real HTTP proxies.
    ("tinyproxy", "tinyproxy"),
    // tests/tests/fleet.rs and the fleet bench: a real NATS server with JetStream.
    ("nats-server", "nats-server"),
    // The static musl build of the image (`cargo xtask image`): async-nats' TLS brings
    // `ring`, whose C part needs a musl C compiler.
    ("x86_64-linux-musl-gcc", "musl-tools"),
];

fn ensure_packages() -> anyhow::Result<()> {
    ensure_debian(PACKAGES)
}

/// Installs the Debian packages whose command (first of each pair) is missing.
pub(crate) fn ensure_debian(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(cmd, _)| which::which(cmd).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(format!(
        "installing Debian packages for the tests: {}",
        missing.join(" ")
    ));
    apt_install(&missing)
}

/// `apt-get update` then `apt-get install` of `packages` (waits for apt's lock).
pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        run_cmd(
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    apt(&args)
}

/// The first file in `dir` whose name ends in `.ext`; `what` names the step that should
/// have written it, for the error.
pub(crate) fn file_with_extension(dir: &Path, ext: &str, what: &str) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == ext))
        .with_context(|| format!("{what} left no .{ext} in {}", dir.display()))
}

/// `~/.cache/connmon`: the project's caches outside the repository (bpf-linker builds,
/// the virtme-ng venv, unpacked kernels).
pub(crate) fn cache_dir() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/connmon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_nightly_from_the_manifest() {
        let manifest = "[workspace]\nnightly = \"x\"\n[workspace.metadata.connmon]\n# comment\nnightly = \"nightly-2026-05-20\"\n[workspace.dependencies]\n";
        assert_eq!(
            parse_pinned_nightly(manifest).as_deref(),
            Some("nightly-2026-05-20")
        );
        assert_eq!(parse_pinned_nightly("[workspace]\n"), None);
        assert!(
            pinned_nightly().is_ok_and(|n| n.starts_with("nightly-20")),
            "the workspace's Cargo.toml pins a dated nightly"
        );
    }
}

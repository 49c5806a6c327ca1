//! Idempotent set-up of everything outside the repository that builds and tests need.
//!
//! - the `nightly` toolchain with `rust-src` (aya-build compiles the eBPF crate with
//!   `-Z build-std=core`);
//! - a `bpf-linker` whose LLVM major equals nightly's. No Debian package ships LLVM 22,
//!   so it is built against nightly's own `libLLVM` (its C API is exported) and cached
//!   under `~/.cache/connmon/`, keyed by nightly's commit: a nightly update rebuilds it;
//! - `cargo-nextest` (the test runner) and the Debian packages the integration tests use;
//! - the Python tests' virtualenv (`pyenv`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip installing Debian packages (the tests need iproute2 and python3).
    #[arg(long)]
    pub no_packages: bool,
}

/// What later steps need from set-up.
pub struct Toolchain {
    /// Directory holding the matching `bpf-linker`; prepend it to PATH.
    pub bpf_linker_dir: PathBuf,
}

impl Toolchain {
    /// PATH with the bpf-linker directory first.
    pub fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.bpf_linker_dir.clone()];
        if let Some(path) = env::var_os("PATH") {
            paths.extend(env::split_paths(&path));
        }
        env::join_paths(paths).expect("PATH entries contain no separator")
    }
}

pub fn say(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// Runs a command, failing with its command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(opts: &Options) -> anyhow::Result<Toolchain> {
    ensure_nightly()?;
    let bpf_linker_dir = ensure_bpf_linker()?;
    ensure_nextest()?;
    if !opts.no_packages {
        ensure_packages()?;
    }
    crate::pyenv::ensure_test_venv()?;
    Ok(Toolchain { bpf_linker_dir })
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

fn ensure_nightly() -> anyhow::Result<()> {
    let have_nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_nightly {
        say(
            "installing the nightly toolchain with rust-src (the eBPF crate is built with -Z build-std)",
        );
        return run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    if !nightly_sysroot()?
        .join("lib/rustlib/src/rust/library")
        .is_dir()
    {
        say("adding rust-src to nightly (the eBPF crate is built with -Z build-std)");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// Nightly's identity: (release, short commit hash, LLVM major).
fn nightly_identity() -> anyhow::Result<(String, String, String)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .with_context(|| format!("`rustc +nightly -vV` has no `{name}` line"))
    };
    let release = field("release:")?;
    let commit = field("commit-hash:")?.chars().take(9).collect();
    let llvm = field("LLVM version:")?;
    let major = llvm.split('.').next().unwrap_or_default().to_owned();
    Ok((release, commit, major))
}

fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let (release, commit, llvm_major) = nightly_identity()?;
    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let root = home
        .join(".cache/connmon")
        .join(format!("bpf-linker-{release}-{commit}-llvm{llvm_major}"));
    let bin = root.join("bin");
    if works(&bin.join("bpf-linker")) {
        return Ok(bin);
    }
    let sysroot_lib = nightly_sysroot()?.join("lib");
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
    ("tinyproxy", "tinyproxy"),
];

fn ensure_packages() -> anyhow::Result<()> {
    ensure_debian(PACKAGES)
}

/// Installs the Debian packages whose command (first of each pair) is missing.
pub fn ensure_debian(packages: &[(&str, &str)]) -> anyhow::Result<()> {
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
    let apt = |args: &[&str]| {
        run_cmd(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

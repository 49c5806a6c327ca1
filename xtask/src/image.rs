//! `cargo xtask image`: the container image `localhost/connmon:<version>`, built with
//! podman from `deploy/Containerfile` (`FROM scratch`: nothing is pulled, no registry
//! is needed) around a static musl build of connmon.
//!
//! The musl build lives in `target/x86_64-unknown-linux-musl/release/` and is
//! incremental like any other; `rustup target add` installs the target once.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{
    build::workspace_root,
    setup::{self, Toolchain, run_cmd, say},
};

pub(crate) const TARGET: &str = "x86_64-unknown-linux-musl";

/// Debian packages building the image needs, by the command that proves each present.
pub(crate) const PACKAGES: &[(&str, &str)] = &[("podman", "podman")];

#[derive(clap::Args, Default)]
pub(crate) struct Options {}

/// The image's name.
pub(crate) fn tag() -> String {
    format!("localhost/connmon:{}", env!("CARGO_PKG_VERSION"))
}

pub(crate) fn run(_opts: &Options) -> anyhow::Result<()> {
    let toolchain = setup::run(&setup::Options { no_packages: true })?;
    setup::ensure_debian(PACKAGES)?;
    let tag = build(&toolchain)?;
    say(format!("built image {tag}"));
    Ok(())
}

/// Builds the static binary and the image; returns the image's name.
pub(crate) fn build(toolchain: &Toolchain) -> anyhow::Result<String> {
    let bin = build_static(toolchain)?;
    let root = workspace_root();
    let context = root.join("target/image");
    if context.exists() {
        fs::remove_dir_all(&context)?;
    }
    let rootfs = context.join("rootfs");
    for dir in [
        "usr/bin",
        "etc/connmon",
        "run/connmon",
        "var/lib/connmon",
        "tmp",
    ] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy(&bin, rootfs.join("usr/bin/connmon"))
        .with_context(|| format!("copying {}", bin.display()))?;
    let tag = tag();
    run_cmd(
        Command::new("podman")
            .args(["build", "--quiet", "--pull=never", "--tag", &tag, "--file"])
            .arg(root.join("deploy/Containerfile"))
            .arg(&context),
    )?;
    Ok(tag)
}

/// `cargo build --release --target x86_64-unknown-linux-musl`; returns the binary.
pub(crate) fn build_static(toolchain: &Toolchain) -> anyhow::Result<PathBuf> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        say(format!(
            "adding the {TARGET} target (a static connmon for the image)"
        ));
        run_cmd(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    let root = workspace_root();
    crate::build::cargo_build(toolchain, &["--release", "--target", TARGET])?;
    Ok(root.join("target").join(TARGET).join("release/connmon"))
}

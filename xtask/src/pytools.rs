//! The project's Python tools venv, `~/.cache/connmon/venv-tools/`: created once,
//! idempotently, with pinned versions. It holds `kubernetes-validate` (validates
//! `deploy/kubernetes/` against the Kubernetes OpenAPI schemas it ships, since no
//! cluster runs here) and builds the client wheel (`pip wheel`).

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::setup::{run_cmd, say};

/// Pinned requirements; a change here creates a new venv (the directory name has a
/// hash of this list).
pub(crate) const REQUIREMENTS: &[&str] = &["kubernetes-validate==1.37.0"];

/// The venv's directory, created and filled if needed.
pub(crate) fn ensure_venv() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let key = REQUIREMENTS
        .join(" ")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let venv = home
        .join(".cache/connmon")
        .join(format!("venv-tools-{:08x}", key as u32));
    let stamp = venv.join(".complete");
    if stamp.exists() {
        return Ok(venv);
    }
    say(format!(
        "creating the Python tools venv {} ({})",
        venv.display(),
        REQUIREMENTS.join(", ")
    ));
    crate::setup::ensure_debian(&[("python3", "python3")])?;
    let has_ensurepip = Command::new("python3")
        .args(["-c", "import ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ensurepip {
        say("installing python3-venv (Debian splits `python3 -m venv` out of python3)");
        run_cmd(
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q"])
                .arg("python3-venv")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !venv.join("bin/python").exists() {
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv (Debian package python3-venv)")?;
    }
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
    )?;
    std::fs::write(&stamp, REQUIREMENTS.join("\n"))?;
    Ok(venv)
}

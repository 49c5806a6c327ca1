//! The Python environment of `clients/python`'s tests and of the scraper benchmark: a
//! virtualenv of Debian's `/usr/bin/python3` with the pinned packages of
//! `clients/python/tests/requirements.txt` (Scrapy, scrapy-rotating-proxies, pytest, and
//! httpx/aiohttp for the README's recipes) from PyPI. It lives under `~/.cache/connmon/pyenv-<hash of the requirements>`, so a
//! changed pin makes a new one and an unchanged one is reused; `~/.cache/connmon/pyenv-test`
//! links to the current one (the root integration tests find it there, or through
//! `CONNMON_TEST_PYTHON`).

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::PathBuf,
    process::Command,
};

use anyhow::Context as _;

use crate::{build, setup};

/// The interpreter the venv is made from: Debian's, not whatever `python3` PATH finds.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/connmon")
}

/// The link to the current venv, as the integration tests look it up.
pub(crate) fn current_link() -> PathBuf {
    cache_dir().join("pyenv-test")
}

/// Makes (once) and returns the venv's `python`.
pub(crate) fn ensure_test_venv() -> anyhow::Result<PathBuf> {
    let requirements = build::workspace_root().join("clients/python/tests/requirements.txt");
    let pins = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let mut hasher = DefaultHasher::new();
    pins.hash(&mut hasher);
    let venv = cache_dir().join(format!("pyenv-{:016x}", hasher.finish()));
    let python = venv.join("bin/python");
    let complete = venv.join(".complete");
    if !complete.exists() {
        ensure_venv_module()?;
        setup::say(format!(
            "making the Python test environment {} (Scrapy, scrapy-rotating-proxies, pytest, httpx, aiohttp from PyPI, pinned in {})",
            venv.display(),
            requirements.display()
        ));
        let _ = std::fs::remove_dir_all(&venv);
        setup::run_cmd(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))?;
        setup::run_cmd(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
        )?;
        std::fs::write(&complete, pins)?;
    }
    let link = current_link();
    if std::fs::read_link(&link).ok().as_deref() != Some(venv.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&venv, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(python)
}

/// `python3 -m venv` needs Debian's python3-venv (ensurepip).
fn ensure_venv_module() -> anyhow::Result<()> {
    if works(Command::new(SYSTEM_PYTHON).args(["-c", "import ensurepip, venv"])) {
        return Ok(());
    }
    setup::say("installing Debian's python3-venv (the Python tests run in a virtualenv)");
    let apt = |args: &[&str]| {
        setup::run_cmd(
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "python3-venv",
    ])
}

fn works(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

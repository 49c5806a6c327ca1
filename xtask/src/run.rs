//! `cargo xtask run`: set-up, release build, then `connmon run` as root with the
//! defaults (or the arguments after `--`).

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::bail;

use crate::{build, setup};

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Arguments for `connmon run`, e.g. `-- --output text`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    let toolchain = setup::run(&setup::Options { no_packages: true })?;
    let bin = build::build_agent(&toolchain, true)?;
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        setup::say("connmon loads eBPF programs: running it through sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(&bin);
        sudo
    };
    cmd.arg("run").args(&opts.args);
    setup::say(format!("running {cmd:?} (Ctrl-C to stop)"));
    let err = cmd.exec();
    bail!("could not start {}: {err}", bin.display())
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

//! The network namespace the benchmarks and the soak send their traffic in: loopback up,
//! a veth pair whose neighbour [`BLACKHOLE`] has a permanent entry with a MAC nobody has
//! (its SYNs vanish, as behind a DROP firewall); deleted on drop.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::setup;

/// The neighbour whose SYNs vanish.
pub(crate) const BLACKHOLE: &str = "10.200.0.2";

pub(crate) struct BlackholeNetns {
    pub name: String,
}

impl BlackholeNetns {
    /// `connmon-<tag>-<pid>`, replacing one a crashed run of the same pid left.
    pub(crate) fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("connmon-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        setup::run_cmd(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = BlackholeNetns { name };
        let n = ns.name.as_str();
        for command in [
            "link set lo up".to_owned(),
            "link add veth0 type veth peer name veth1".to_owned(),
            "addr add 10.200.0.1/24 dev veth0".to_owned(),
            "link set veth0 up".to_owned(),
            "link set veth1 up".to_owned(),
            format!("neigh add {BLACKHOLE} lladdr 02:00:00:00:00:99 dev veth0 nud permanent"),
        ] {
            setup::run_cmd(
                Command::new("ip")
                    .args(["-n", n])
                    .args(command.split(' '))
                    .stdout(Stdio::null()),
            )?;
        }
        Ok(ns)
    }

    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub(crate) fn sysctl(&self, setting: &str) -> anyhow::Result<()> {
        setup::run_cmd(
            Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-q", "-w", setting]),
        )
    }
}

impl Drop for BlackholeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

//! Who can move a verdict: the evidence scope (`[policy.evidence]`).
//!
//! connmon sees the connects of every network namespace on the host. Any user can make a
//! network namespace of their own (`unshare -Urn`: a new user namespace in which they
//! are "root"), put any address on its loopback and have connects to it refused — so a
//! connect is evidence against a destination only if it comes from where that means
//! something. This module is the one place that decides it: [`EvidenceScope::trusts`]
//! takes a connect's attribution and answers yes or no. Untrusted connects are still
//! reported (`"trusted": false`) and diagnosed (`localhost_trap`), but never count
//! toward a verdict, a guard or an outage.
//!
//! - `trust = "rootful"` (default): namespaces owned by the initial user namespace —
//!   created by real root: the host, Docker, containerd, CRI-O, `ip netns`. Ownership is
//!   read in the kernel from the socket (`net->user_ns->level == 0`), so a process
//!   cannot claim it. If the kernel could not tell (unknown owner), only connmon's own
//!   namespace counts.
//! - `trust = "host"`: only connmon's own network namespace.
//! - `trust = "all"`: every namespace (connmon before this setting existed).
//! - `netns = [...]`, `cgroups = [...]`: when either list is non-empty, a connect must
//!   also come from a listed network namespace or from under a listed cgroup v2 path
//!   (path prefixes match whole components: `/system.slice/scrapyd.service` covers
//!   `/system.slice/scrapyd.service/worker`, not `/system.slice/scrapyd.service2`). The
//!   lists narrow `trust`, never widen it: to admit a rootless namespace, set
//!   `trust = "all"` and list it.
//!
//! Namespaces named by path (`/run/netns/a`, `/proc/PID/ns/net`) are opened when the
//! scope is built and kept open while it is in force: a namespace that is still open
//! cannot be freed, so its inode number cannot be handed to a new namespace behind
//! connmon's back. A namespace given as an inode number is not pinned: if it vanishes,
//! its number may be reused by a new namespace (the kernel recycles nsfs inode numbers),
//! which would then be admitted until the list is changed — prefer paths. A listed
//! namespace or cgroup that no longer exists simply matches nothing; a path that does
//! not exist when the scope is built (start or SIGHUP) is an error.

use std::{
    fmt,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    invalid::Invalid,
    source::event::{Attribution, NetnsOwner},
};

/// Which network namespaces are trusted by who owns them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Namespaces created by real root (owned by the initial user namespace).
    #[default]
    Rootful,
    /// Only connmon's own network namespace.
    Host,
    /// Every namespace.
    All,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trust::Rootful => "rootful",
            Trust::Host => "host",
            Trust::All => "all",
        })
    }
}

/// A network namespace in `policy.evidence.netns`: a path or an inode number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NetnsRef {
    Inode(u64),
    Path(PathBuf),
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsRef::Inode(inode) => write!(f, "{inode}"),
            NetnsRef::Path(path) => write!(f, "{:?}", path.display().to_string()),
        }
    }
}

/// The `[policy.evidence]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    pub trust: Trust,
    /// Network namespaces whose connects are evidence (paths or inode numbers).
    pub netns: Vec<NetnsRef>,
    /// cgroup v2 path prefixes whose connects are evidence.
    pub cgroups: Vec<String>,
}

impl EvidenceConfig {
    /// Checks what can be checked without the filesystem (the cgroup prefixes and inode
    /// numbers); paths are checked when the scope is built.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, prefix) in self.cgroups.iter().enumerate() {
            if !prefix.starts_with('/') || prefix.split('/').any(|c| c == "." || c == "..") {
                return Err(Invalid {
                    key: format!("policy.evidence.cgroups[{i}]"),
                    value: format!("{prefix:?}"),
                    allowed: "must be an absolute cgroup v2 path such as \"/system.slice/scrapyd.service\" or \"/kubepods.slice\" (as in /proc/PID/cgroup, without the mount point)".to_owned(),
                });
            }
        }
        for (i, netns) in self.netns.iter().enumerate() {
            if let NetnsRef::Inode(inode) = netns
                && (*inode == 0 || *inode > u64::from(u32::MAX))
            {
                return Err(Invalid {
                    key: format!("policy.evidence.netns[{i}]"),
                    value: inode.to_string(),
                    allowed: "must be a network namespace inode number (as in `readlink /proc/PID/ns/net`) or a path such as \"/run/netns/NAME\"".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// `NS_GET_NSTYPE` (include/uapi/linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens a network namespace file and returns it with its inode number.
fn open_netns(path: &std::path::Path) -> Result<(OwnedFd, u32), String> {
    use std::os::unix::fs::MetadataExt as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    // SAFETY: an ioctl without argument on a file we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(
            "not a network namespace (expected a path such as /run/netns/NAME or /proc/PID/ns/net)"
                .to_owned(),
        );
    }
    let inode = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?
        .ino();
    Ok((file.into(), inode as u32))
}

/// The evidence scope in force. See the module documentation.
#[derive(Clone, Debug)]
pub struct EvidenceScope {
    trust: Trust,
    host_netns: u32,
    netns: Vec<u32>,
    cgroups: Vec<String>,
    /// Namespaces named by path, kept open so that their inode numbers stay theirs.
    _pinned: Arc<Vec<OwnedFd>>,
}

impl EvidenceScope {
    /// Builds the scope: resolves namespace paths (an error names the entry).
    /// `host_netns` is the inode of connmon's own network namespace.
    pub fn from_config(config: &EvidenceConfig, host_netns: u32) -> Result<Self, Invalid> {
        config.validate()?;
        let mut netns = Vec::new();
        let mut pinned = Vec::new();
        for (i, entry) in config.netns.iter().enumerate() {
            match entry {
                NetnsRef::Inode(inode) => netns.push(*inode as u32),
                NetnsRef::Path(path) => {
                    let (fd, inode) = open_netns(path).map_err(|allowed| Invalid {
                        key: format!("policy.evidence.netns[{i}]"),
                        value: entry.to_string(),
                        allowed,
                    })?;
                    netns.push(inode);
                    pinned.push(fd);
                }
            }
        }
        let cgroups = config
            .cgroups
            .iter()
            .map(|c| {
                let trimmed = c.trim_end_matches('/');
                if trimmed.is_empty() { "/" } else { trimmed }.to_owned()
            })
            .collect();
        Ok(EvidenceScope {
            trust: config.trust,
            host_netns,
            netns,
            cgroups,
            _pinned: Arc::new(pinned),
        })
    }

    /// The default scope (`trust = "rootful"`, no lists).
    pub fn rootful(host_netns: u32) -> Self {
        EvidenceScope {
            trust: Trust::Rootful,
            host_netns,
            netns: Vec::new(),
            cgroups: Vec::new(),
            _pinned: Arc::default(),
        }
    }

    pub fn trust(&self) -> Trust {
        self.trust
    }

    /// The listed namespaces, resolved to inode numbers.
    pub fn netns(&self) -> &[u32] {
        &self.netns
    }

    pub fn cgroups(&self) -> &[String] {
        &self.cgroups
    }

    /// Whether a connect with this attribution is evidence that may move a verdict.
    pub fn trusts(&self, who: &Attribution) -> bool {
        let own = who.netns != 0 && who.netns == self.host_netns;
        let owner_trusted = match self.trust {
            Trust::All => true,
            Trust::Host => own,
            Trust::Rootful => own || who.netns_owner == NetnsOwner::Initial,
        };
        if !owner_trusted {
            return false;
        }
        if self.netns.is_empty() && self.cgroups.is_empty() {
            return true;
        }
        (who.netns != 0 && self.netns.contains(&who.netns))
            || who
                .cgroup_path()
                .is_some_and(|path| self.cgroups.iter().any(|p| under(path, p)))
    }
}

/// Whether cgroup `path` is `prefix` or below it (whole components).
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::source::{cgroup::CgroupOrigin, event::Comm};

    const HOST: u32 = 4026531840;
    const DOCKER: u32 = 4026532300;
    const ROOTLESS: u32 = 4026532400;

    fn who(netns: u32, owner: NetnsOwner, cgroup: Option<&str>) -> Attribution {
        Attribution {
            pid: 10,
            tgid: 10,
            comm: Comm::from("scraper"),
            cgroup_id: 77,
            netns,
            netns_owner: owner,
            cgroup: cgroup.map(|p| Arc::new(CgroupOrigin::from_path(p))),
            trusted: false,
        }
    }

    fn scope(toml_text: &str) -> EvidenceScope {
        let config: EvidenceConfig = toml::from_str(toml_text).expect("valid config");
        EvidenceScope::from_config(&config, HOST).expect("valid scope")
    }

    #[test]
    fn rootful_trusts_root_owned_namespaces_only() {
        let s = scope("");
        assert_eq!(s.trust(), Trust::Rootful);
        assert!(s.trusts(&who(HOST, NetnsOwner::Initial, None)));
        assert!(s.trusts(&who(DOCKER, NetnsOwner::Initial, None)));
        assert!(!s.trusts(&who(ROOTLESS, NetnsOwner::Child, None)));
        assert!(
            s.trusts(&who(HOST, NetnsOwner::Unknown, None)),
            "connmon's own namespace needs no kernel answer"
        );
        assert!(
            !s.trusts(&who(DOCKER, NetnsOwner::Unknown, None)),
            "unknown owner elsewhere fails closed"
        );
        assert!(!s.trusts(&who(0, NetnsOwner::Unknown, None)));
    }

    #[test]
    fn host_and_all() {
        let host = scope(r#"trust = "host""#);
        assert!(host.trusts(&who(HOST, NetnsOwner::Initial, None)));
        assert!(!host.trusts(&who(DOCKER, NetnsOwner::Initial, None)));
        let all = scope(r#"trust = "all""#);
        assert!(all.trusts(&who(ROOTLESS, NetnsOwner::Child, None)));
        assert!(all.trusts(&who(0, NetnsOwner::Unknown, None)));
    }

    #[test]
    fn lists_narrow_the_trusted_namespaces() {
        let s = scope(&format!(
            r#"netns = [{DOCKER}]
               cgroups = ["/system.slice/scrapyd.service", "/kubepods.slice/"]"#
        ));
        let (i, c) = (NetnsOwner::Initial, NetnsOwner::Child);
        const SCRAPYD: &str = "/system.slice/scrapyd.service";
        // (netns, owner, cgroup ("": unresolved), trusted, why)
        #[rustfmt::skip]
        let cases = [
            (DOCKER, i, "", true, "a listed namespace"),
            (HOST, i, "/user.slice/session-1.scope", false, "the host itself is not listed"),
            (HOST, i, SCRAPYD, true, "a listed cgroup"),
            (HOST, i, "/system.slice/scrapyd.service/worker-3", true, "below a listed cgroup"),
            (HOST, i, "/system.slice/scrapyd.service2", false, "prefixes match whole components"),
            (DOCKER, i, "/kubepods.slice/kubepods-besteffort.slice", true, "listed"),
            (ROOTLESS, c, SCRAPYD, false, "a list never admits an untrusted owner"),
            (HOST, i, "", false, "unresolved cgroup"),
        ];
        for (netns, owner, cgroup, trusted, why) in cases {
            let cgroup = (!cgroup.is_empty()).then_some(cgroup);
            assert_eq!(
                s.trusts(&who(netns, owner, cgroup)),
                trusted,
                "{why}: netns {netns}, {owner:?}, cgroup {cgroup:?}"
            );
        }
    }

    #[test]
    fn rootless_namespace_admitted_only_with_trust_all_and_listed() {
        let s = scope(&format!(
            r#"trust = "all"
               netns = [{ROOTLESS}]"#
        ));
        assert!(s.trusts(&who(ROOTLESS, NetnsOwner::Child, None)));
        assert!(!s.trusts(&who(DOCKER, NetnsOwner::Initial, None)));
    }

    #[test]
    fn namespace_paths_resolve_to_their_inode_and_bad_entries_are_named() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let s = scope(r#"netns = ["/proc/self/ns/net"]"#);
        assert_eq!(s.netns(), &[own]);

        let config = |text: &str| toml::from_str::<EvidenceConfig>(text).unwrap();
        let err =
            EvidenceScope::from_config(&config(r#"netns = ["/run/netns/no-such-ns-x"]"#), HOST)
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with(
                r#"policy.evidence.netns[0] = "/run/netns/no-such-ns-x": cannot open it"#
            ),
            "{err}"
        );
        let err = EvidenceScope::from_config(&config(r#"netns = ["/proc/self/ns/uts"]"#), HOST)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a network namespace"), "{err}");
        let err = EvidenceScope::from_config(&config("netns = [0]"), HOST)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("policy.evidence.netns[0] = 0: must be"),
            "{err}"
        );
        let err = EvidenceScope::from_config(&config(r#"cgroups = ["system.slice"]"#), HOST)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(r#"policy.evidence.cgroups[0] = "system.slice": must be an absolute"#),
            "{err}"
        );
        assert!(
            toml::from_str::<EvidenceConfig>(r#"trust = "everyone""#).is_err(),
            "unknown trust values are rejected by the parser"
        );
    }

    #[test]
    fn root_prefix_matches_everything() {
        assert!(under("/a/b", "/"));
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(!under("/ab", "/a"));
    }
}

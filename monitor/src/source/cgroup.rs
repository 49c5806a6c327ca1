//! Container attribution: the cgroup v2 path behind a `cgroup_id`, and the container and
//! Kubernetes pod that path names.
//!
//! The programs record `bpf_get_current_cgroup_id()`, the id of the connecting task's
//! cgroup in the v2 (unified) hierarchy — the kernfs node id of its directory. The
//! agent turns it into a path in user space: `open_by_handle_at()` with a kernfs file
//! handle (`FILEID_KERNFS`, the id as the handle) on the v2 mount opens the directory in
//! O(1), and `/proc/self/fd/N` names it. This needs CAP_DAC_READ_SEARCH (root has it).
//! The v2 hierarchy is found in `/proc/self/mountinfo` wherever it is mounted: alone at
//! `/sys/fs/cgroup` on current distributions, at `/sys/fs/cgroup/unified` in the hybrid
//! layout.
//!
//! Results are cached per id in two generations of at most [`CACHE_GENERATION`] entries
//! each (an id seen in the last generation is promoted; when the current one is full the
//! older one is dropped), so memory stays bounded whatever the churn of short-lived
//! cgroups. A cgroup removed before it was resolved has no path (`cgroup` absent); that
//! answer is cached too, which is safe because v2 cgroup ids are 64-bit (generation in
//! the high half on 64-bit kernels) and never reused while the system runs. A cgroup
//! renamed after it was first seen keeps its old path until its entry ages out.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

/// Entries per cache generation (two generations are kept).
pub const CACHE_GENERATION: usize = 4096;

/// `FILEID_KERNFS` (include/linux/exportfs.h): a kernfs node id as a file handle.
const FILEID_KERNFS: i32 = 0xfe;

/// Where a connecting task ran: its cgroup v2 path and what the path says about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CgroupOrigin {
    /// The path inside the v2 hierarchy, e.g. `/system.slice/docker-<id>.scope`
    /// (`"cgroup"` in JSON).
    #[serde(rename = "cgroup")]
    pub path: Box<str>,
    /// The container id (64 hex digits) from a Docker, containerd, CRI-O or Podman
    /// cgroup name, if the path has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<str>>,
    /// The Kubernetes pod UID from a `kubepods` path, if the path has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<Box<str>>,
}

impl CgroupOrigin {
    /// The origin a cgroup path describes.
    pub fn from_path(path: &str) -> Self {
        CgroupOrigin {
            path: path.into(),
            container: container_id(path).map(Into::into),
            pod_uid: pod_uid(path).map(Into::into),
        }
    }
}

/// Prefixes of container scopes: Docker (`docker-`), containerd's CRI plugin
/// (`cri-containerd-`), CRI-O (`crio-`), Podman (`libpod-`), plain containerd
/// (`containerd-`). Podman's monitor process lives in `libpod-conmon-<id>.scope`,
/// which is not the container.
const SCOPE_PREFIXES: [&str; 5] = [
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id a cgroup path names: the deepest component that is a
/// `<runtime>-<64 hex>.scope` (systemd cgroup driver) or a bare 64-hex directory
/// (cgroupfs driver: `/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`).
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|component| {
        if is_container_id(component) {
            return Some(component);
        }
        let name = component.strip_suffix(".scope")?;
        if name.starts_with("libpod-conmon-") {
            return None;
        }
        SCOPE_PREFIXES
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .filter(|id| is_container_id(id))
    })
}

/// The Kubernetes pod UID a cgroup path names: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver), returned with
/// dashes. Only under a `kubepods` component, so an unrelated `pod…` name is not read.
pub fn pod_uid(path: &str) -> Option<String> {
    if !path.split('/').any(|c| c.starts_with("kubepods")) {
        return None;
    }
    path.split('/').find_map(|component| {
        let name = component.strip_suffix(".slice").unwrap_or(component);
        let at = name.rfind("pod")?;
        let uid = name[at + 3..].replace('_', "-");
        let groups: Vec<&str> = uid.split('-').collect();
        let shape = [8, 4, 4, 4, 12];
        (groups.len() == 5
            && groups
                .iter()
                .zip(shape)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit())))
        .then_some(uid)
    })
}

/// The mount point of the cgroup v2 hierarchy in a `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why cgroup paths cannot be resolved on this host (logged once at start).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo)")]
    NoHierarchy,
    #[error("cannot open the cgroup v2 hierarchy at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The open v2 hierarchy.
#[derive(Debug)]
struct Hierarchy {
    mount: PathBuf,
    fd: OwnedFd,
}

/// Resolves `cgroup_id`s to [`CgroupOrigin`]s, with a bounded cache.
#[derive(Debug, Default)]
pub struct CgroupResolver {
    hierarchy: Option<Hierarchy>,
    current: HashMap<u64, Option<Arc<CgroupOrigin>>>,
    previous: HashMap<u64, Option<Arc<CgroupOrigin>>>,
}

impl CgroupResolver {
    /// A resolver on the v2 hierarchy mounted on this host.
    pub fn open() -> Result<Self, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoHierarchy)?;
        Self::at(&mount)
    }

    /// A resolver on the v2 hierarchy mounted at `mount`.
    pub fn at(mount: &Path) -> Result<Self, CgroupError> {
        let file = std::fs::File::open(mount).map_err(|source| CgroupError::Open {
            path: mount.to_owned(),
            source,
        })?;
        Ok(CgroupResolver {
            hierarchy: Some(Hierarchy {
                mount: mount.to_owned(),
                fd: file.into(),
            }),
            ..CgroupResolver::default()
        })
    }

    /// A resolver that resolves nothing (no v2 hierarchy).
    pub fn disabled() -> Self {
        CgroupResolver::default()
    }

    /// Where the v2 hierarchy is mounted, if it was found.
    pub fn mount(&self) -> Option<&Path> {
        self.hierarchy.as_ref().map(|h| h.mount.as_path())
    }

    /// The origin of `cgroup_id`, from the cache or resolved now.
    pub fn resolve(&mut self, cgroup_id: u64) -> Option<Arc<CgroupOrigin>> {
        if let Some(hit) = self.current.get(&cgroup_id) {
            return hit.clone();
        }
        let found = match self.previous.remove(&cgroup_id) {
            Some(promoted) => promoted,
            None => {
                let hierarchy = self.hierarchy.as_ref()?;
                match path_of(hierarchy, cgroup_id) {
                    Ok(path) => Some(Arc::new(CgroupOrigin::from_path(&path))),
                    // Gone (ESTALE/ENOENT) is a final answer: ids are never reused.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => None,
                    Err(_) => return None,
                }
            }
        };
        if self.current.len() >= CACHE_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(cgroup_id, found.clone());
        found
    }

    /// Entries cached (both generations), for tests.
    pub fn cached(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// `open_by_handle_at(FILEID_KERNFS, id)` on the hierarchy, then the path of the fd.
fn path_of(hierarchy: &Hierarchy, cgroup_id: u64) -> std::io::Result<String> {
    /// `struct file_handle` with room for the 8-byte kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: [u8; 8],
    }
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: cgroup_id.to_ne_bytes(),
    };
    // SAFETY: `handle` is a valid file_handle of 8 bytes; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            hierarchy.fd.as_raw_fd(),
            (&raw mut handle).cast::<libc::c_void>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let path = link.to_string_lossy();
    // The link is the path in our mount namespace; inside the hierarchy it is relative
    // to the mount point. A cgroup namespace would show it relative to its root.
    let relative = link
        .strip_prefix(&hierarchy.mount)
        .map(|p| format!("/{}", p.to_string_lossy()))
        .unwrap_or_else(|_| path.into_owned());
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c1b2a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    #[test]
    fn container_ids_of_the_common_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}"),
        ] {
            assert_eq!(container_id(&path), Some(ID), "{path}");
        }
        for path in [
            "/system.slice/scrapyd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/",
            "/system.slice/docker-abc.scope",
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
        assert_eq!(
            container_id(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None,
            "podman's conmon is not the container"
        );
    }

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        let uid = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";
        assert_eq!(
            pod_uid(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope"
            ))
            .as_deref(),
            Some(uid)
        );
        assert_eq!(
            pod_uid(&format!("/kubepods/besteffort/pod{uid}/{ID}")).as_deref(),
            Some(uid)
        );
        assert_eq!(
            pod_uid(&format!(
                "/kubepods.slice/kubepods-pod{}.slice",
                uid.replace('-', "_")
            ))
            .as_deref(),
            Some(uid),
            "guaranteed QoS pods sit directly under kubepods.slice"
        );
        assert_eq!(pod_uid(&format!("/system.slice/pod{uid}")), None);
        assert_eq!(pod_uid("/kubepods.slice/kubepods-burstable.slice"), None);
    }

    #[test]
    fn finds_the_v2_hierarchy_in_hybrid_and_unified_layouts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            cgroup2_mount("31 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n"),
            None
        );
    }

    #[test]
    fn a_disabled_resolver_resolves_nothing_and_caches_nothing() {
        let mut r = CgroupResolver::disabled();
        assert_eq!(r.resolve(1), None);
        assert_eq!(r.cached(), 0);
    }
}

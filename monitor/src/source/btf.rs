//! Kernel struct offsets from BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF through aya has no CO-RE field relocations, so every kernel struct read the
//! programs make — the socket's state, error, protocol and 4-tuple,
//! `sk->__sk_common.skc_net.net->ns.inum` and `net->user_ns->level` (who owns the
//! namespace) — uses offsets resolved here at start-up and handed over in `ProbeConfig`.
//! The same BTF decides which optional hooks the running kernel has.

use std::path::Path;

use btf_rs::{Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not readable at {path} (a kernel built with CONFIG_DEBUG_INFO_BTF is required): {source}"
    )]
    Unreadable {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
}

/// Offsets of the kernel fields the programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `offsetof(struct sock, sk_err)`.
    pub sock_sk_err: u32,
    /// `offsetof(struct sock, sk_protocol)`.
    pub sock_sk_protocol: u32,
    /// `struct sock_common`: `skc_state`, `skc_family`, `skc_daddr`, `skc_rcv_saddr`,
    /// `skc_dport` (offsets inside `struct sock`, which starts with it).
    pub skc_state: u32,
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr`: absent without CONFIG_IPV6.
    pub skc_v6: Option<(u32, u32)>,
    /// `offsetof(struct inet_sock, inet_sport)`.
    pub inet_sport: u32,
    /// `offsetof(struct sock, sk_shutdown)` if it starts on a byte boundary (a plain
    /// `u8`, or a bitfield at bit 0 of its byte).
    pub sock_sk_shutdown: Option<u32>,
    /// `offsetof(struct sock_common, skc_net) + offsetof(possible_net_t, net)`.
    pub sock_common_skc_net: Option<u32>,
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub net_ns_inum: Option<u32>,
    /// `offsetof(struct net, user_ns)`.
    pub net_user_ns: Option<u32>,
    /// `offsetof(struct user_namespace, level)`.
    pub user_ns_level: Option<u32>,
}

/// A loaded BTF blob that answers "where is member X of struct Y".
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Ok(KernelBtf { btf })
    }

    /// The byte offset of `path` (e.g. `["skc_net", "net"]`) inside `struct strukt`,
    /// looking through anonymous struct/union members and typedefs.
    pub fn offset_of(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut ty = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct(strukt.to_owned()))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut total_bits = 0u32;
        for member in path {
            let (bits, member_ty) =
                self.find_member(&ty, member)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.to_owned(),
                        member: path.join("."),
                    })?;
            total_bits += bits;
            ty = member_ty;
        }
        Ok(total_bits / 8)
    }

    /// Like [`offset_of`](Self::offset_of), but None unless the member starts on a byte
    /// boundary.
    pub fn byte_offset_of(&self, strukt: &str, path: &[&str]) -> Option<u32> {
        let mut ty = self
            .btf
            .resolve_types_by_name(strukt)
            .ok()?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))?;
        let mut total_bits = 0u32;
        for member in path {
            let (bits, member_ty) = self.find_member(&ty, member)?;
            total_bits += bits;
            ty = member_ty;
        }
        total_bits.is_multiple_of(8).then_some(total_bits / 8)
    }

    /// Finds `name` in a struct/union (after typedefs), recursing into anonymous members.
    fn find_member(&self, ty: &Type, name: &str) -> Option<(u32, Type)> {
        let ty = self.strip_typedefs(ty.clone())?;
        let (Type::Struct(s) | Type::Union(s)) = &ty else {
            return None;
        };
        for m in &s.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let member_ty = self.btf.resolve_chained_type(m).ok()?;
            if member_name == name {
                return Some((m.bit_offset(), member_ty));
            }
            if member_name.is_empty()
                && let Some((bits, found)) = self.find_member(&member_ty, name)
            {
                return Some((m.bit_offset() + bits, found));
            }
        }
        None
    }

    fn strip_typedefs(&self, mut ty: Type) -> Option<Type> {
        for _ in 0..16 {
            match &ty {
                Type::Typedef(t) => ty = self.btf.resolve_chained_type(t).ok()?,
                Type::Volatile(t) => ty = self.btf.resolve_chained_type(t).ok()?,
                Type::Const(t) => ty = self.btf.resolve_chained_type(t).ok()?,
                _ => return Some(ty),
            }
        }
        None
    }

    /// Whether the kernel has a (non-inlined) function `name`: BTF describes every
    /// function the kernel keeps as a symbol, whatever the version number says
    /// (distributions backport).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    /// Whether the kernel has the BTF-enabled tracepoint `name` (the typedef
    /// `btf_trace_<name>` that `tp_btf` programs attach through).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Typedef(_))))
    }

    /// Resolves everything the programs need. The socket fields are required; IPv6
    /// addresses and the network namespace are optional (a kernel without CONFIG_IPV6
    /// or CONFIG_NET_NS lacks them).
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let common = |member: &str| self.offset_of("sock_common", &[member]);
        let skc_v6 = match (common("skc_v6_daddr"), common("skc_v6_rcv_saddr")) {
            (Ok(d), Ok(s)) => Some((d, s)),
            _ => None,
        };
        Ok(KernelOffsets {
            sock_sk_err: self.offset_of("sock", &["sk_err"])?,
            sock_sk_protocol: self.offset_of("sock", &["sk_protocol"])?,
            skc_state: common("skc_state")?,
            skc_family: common("skc_family")?,
            skc_daddr: common("skc_daddr")?,
            skc_rcv_saddr: common("skc_rcv_saddr")?,
            skc_dport: common("skc_dport")?,
            skc_v6,
            inet_sport: self.offset_of("inet_sock", &["inet_sport"])?,
            sock_sk_shutdown: self.byte_offset_of("sock", &["sk_shutdown"]),
            sock_common_skc_net: self.offset_of("sock_common", &["skc_net", "net"]).ok(),
            net_ns_inum: self.offset_of("net", &["ns", "inum"]).ok(),
            net_user_ns: self.offset_of("net", &["user_ns"]).ok(),
            user_ns_level: self.offset_of("user_namespace", &["level"]).ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the build machine's own kernel BTF, which every supported host has.
    #[test]
    fn resolves_socket_offsets_from_vmlinux() {
        let path = Path::new(VMLINUX);
        assert!(
            path.exists(),
            "{VMLINUX} missing: connmon needs a kernel with BTF"
        );
        let btf = KernelBtf::open(path).unwrap();
        let offsets = btf.kernel_offsets().unwrap();
        // struct sock starts with struct sock_common, and sk_err lies well past it.
        let common_at = btf.offset_of("sock", &["__sk_common"]).unwrap();
        assert_eq!(common_at, 0);
        assert!(offsets.sock_sk_err > 100, "{offsets:?}");
        // sock_common's fixed layout (include/net/sock.h): addresses first, then ports,
        // then family and state.
        assert_eq!(offsets.skc_daddr, 0, "{offsets:?}");
        assert_eq!(offsets.skc_rcv_saddr, 4, "{offsets:?}");
        assert_eq!(offsets.skc_dport, 12, "{offsets:?}");
        assert_eq!(offsets.skc_family, 16, "{offsets:?}");
        assert_eq!(offsets.skc_state, 18, "{offsets:?}");
        assert!(offsets.skc_v6.is_some(), "{offsets:?}");
        assert!(offsets.inet_sport > offsets.sock_sk_err, "{offsets:?}");
        assert!(offsets.sock_sk_shutdown.is_some(), "{offsets:?}");
        assert!(offsets.sock_common_skc_net.is_some(), "{offsets:?}");
        assert!(offsets.net_ns_inum.is_some(), "{offsets:?}");
        assert!(offsets.net_user_ns.is_some(), "{offsets:?}");
        assert!(offsets.user_ns_level.is_some(), "{offsets:?}");
    }

    #[test]
    fn unknown_members_are_named_in_the_error() {
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let err = btf
            .offset_of("sock", &["no_such_member"])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "BTF struct `sock` has no member `no_such_member`");
        let err = btf
            .offset_of("no_such_struct_xyz", &["a"])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "BTF has no struct `no_such_struct_xyz`");
    }
}

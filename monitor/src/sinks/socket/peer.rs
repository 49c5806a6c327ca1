//! Who is on the other end of a socket connection, from the kernel (SO_PEERCRED, filled
//! at `connect()`; the peer cannot forge it), and whether it may change the engine's
//! state. Reading is open to anyone who can open the socket (mode 0660, `socket_group`);
//! pool/evict/reinstate need root or a uid/primary gid listed in
//! `agent.allowed_uids`/`allowed_gids`.

use tokio::net::UnixStream;

/// The credentials of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
    }
}

/// Which peers may send state-changing commands besides root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
}

impl Permissions {
    pub fn may_change_state(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || self.allowed_uids.contains(&peer.uid)
            || self.allowed_gids.contains(&peer.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_listed_ids_may_change_state_others_may_not() {
        let p = Permissions {
            allowed_uids: vec![1000],
            allowed_gids: vec![50],
        };
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        assert!(p.may_change_state(&peer(0, 0)));
        assert!(p.may_change_state(&peer(1000, 1000)));
        assert!(p.may_change_state(&peer(1001, 50)));
        assert!(!p.may_change_state(&peer(65534, 65534)));
        assert!(!Permissions::default().may_change_state(&peer(1000, 1000)));
    }

    #[tokio::test]
    async fn credentials_come_from_the_kernel() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.pid, Some(std::process::id() as i32));
    }
}

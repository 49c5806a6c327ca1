//! The state file: ejections and ejection history survive a restart. Times are stored
//! as Unix milliseconds (CLOCK_MONOTONIC does not survive a reboot) and mapped back
//! through the new [`crate::clock::WallClock`] on load. The file is replaced atomically
//! (temporary file in the same directory, fsync, rename, fsync of the directory), so a
//! crash leaves the old or the new file, never half of one.

use std::{
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Decision, EjectionPolicy, Reinstatement, Role, decision::Reason, ejection::Ejected};
use crate::table::DestinationKey;

/// What [`EjectionPolicy::load_state`] restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The file existed.
    pub found: bool,
    /// Ejections still in force, restored (no `evict` decision is emitted for them:
    /// sinks that need them read [`EjectionPolicy::snapshot`] at start).
    pub restored: usize,
    /// Ejections that expired while connmon was down: reinstated, with a decision.
    pub reinstated: usize,
    /// Destinations whose undecayed ejection count was restored.
    pub history: usize,
}

/// Format version written in the file; a file of another version is not loaded.
pub const STATE_VERSION: u32 = 1;

/// The file's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    /// RFC 3339; informational.
    pub saved_at: String,
    pub destinations: Vec<SavedStanding>,
}

/// One destination with an ejection in force or an ejection count that has not decayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedStanding {
    pub dst: SocketAddr,
    /// Another network namespace's loopback: that namespace's inode. After a reboot the
    /// number means nothing (namespaces are new); such an entry is then simply never
    /// matched again and expires like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub ejection_count: u32,
    #[serde(default)]
    pub probation: bool,
    pub healthy_since_unix_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<SavedEjection>,
}

/// An ejection in force when the file was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedEjection {
    pub reason: Reason,
    pub since_unix_ms: i64,
    pub until_unix_ms: i64,
}

/// Why the state file could not be read or written. On load the caller logs it and
/// starts with an empty state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt, ignoring it: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "state file {path} has version {found}, this connmon reads version {STATE_VERSION}; ignoring it"
    )]
    Version { path: PathBuf, found: u64 },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Reads the file; `Ok(None)` when it does not exist.
///
/// A process killed during [`write`] (kill -9, power loss) leaves its temporary file
/// behind (never the state file half-written); those of other processes are removed
/// here, so that repeated crashes cannot fill the directory.
pub fn read(path: &Path) -> Result<Option<StateFile>, StateError> {
    remove_stale_temporaries(path);
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
    let found = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if found != u64::from(STATE_VERSION) {
        return Err(StateError::Version {
            path: path.to_owned(),
            found,
        });
    }
    serde_json::from_value(value).map(Some).map_err(corrupt)
}

/// `.NAME.tmp.`: the temporary file of a write is this followed by the writer's pid.
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp.")
}

/// Removes temporary files that other (dead or foreign) processes left next to `path`.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = temporary_prefix(&name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let own = std::process::id().to_string();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if pid != own && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed the temporary state file of an interrupted write")
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), %err, "cannot remove the temporary state file of an interrupted write")
                }
            }
        }
    }
}

/// Writes the file atomically, creating its directory if needed.
pub fn write(path: &Path, state: &StateFile) -> Result<(), StateError> {
    let fail = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| fail(io::Error::other(e)))?;
    bytes.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(fail)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_owned());
    let tmp = dir.join(format!("{}{}", temporary_prefix(&name), std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

impl EjectionPolicy {
    /// Writes ejections in force and undecayed ejection counts to `path`, atomically.
    pub fn save_state(&self, path: &Path, now: u64) -> Result<(), StateError> {
        write(path, &self.state_snapshot(now))
    }

    /// What [`EjectionPolicy::save_state`] writes, for writing elsewhere (the agent
    /// hands it to a writer thread so that fsync never delays the pipeline).
    pub fn state_snapshot(&self, now: u64) -> StateFile {
        let unix_ms =
            |mono: u64| i64::try_from(self.wall.unix_ns(mono) / 1_000_000).unwrap_or(i64::MAX);
        let mut destinations: Vec<SavedStanding> = self
            .table
            .iter()
            .filter(|(_, d)| d.annotation.ejected.is_some() || d.annotation.ejection_count > 0)
            .map(|(dst, d)| SavedStanding {
                dst: dst.addr,
                netns: dst.netns,
                ejection_count: d.annotation.ejection_count,
                probation: d.annotation.probation,
                healthy_since_unix_ms: unix_ms(d.annotation.healthy_since_ns),
                ejection: d.annotation.ejected.as_ref().map(|e| SavedEjection {
                    reason: e.reason,
                    since_unix_ms: unix_ms(e.since_ns),
                    until_unix_ms: unix_ms(e.until_ns),
                }),
            })
            .collect();
        destinations.sort_by_key(|d| (d.dst, d.netns));
        StateFile {
            version: STATE_VERSION,
            saved_at: self.wall.rfc3339(now),
            destinations,
        }
    }

    /// Loads a state file written by [`EjectionPolicy::save_state`], normally at start.
    /// Ejections that ended while connmon was down are reinstated now (with decisions
    /// in `out`). On error nothing is loaded: the caller logs the error and goes on
    /// with an empty state. Destinations that already have an ejection are left alone.
    pub fn load_state(
        &mut self,
        path: &Path,
        now: u64,
        out: &mut Vec<Decision>,
    ) -> Result<LoadReport, StateError> {
        let Some(file) = read(path)? else {
            return Ok(LoadReport::default());
        };
        let mut report = LoadReport {
            found: true,
            ..LoadReport::default()
        };
        let now_unix_ms = self.wall.unix_ns(now) / 1_000_000;
        for saved in file.destinations {
            let dst = DestinationKey {
                addr: saved.dst,
                netns: saved.netns,
            };
            let verify = self.verify_before_reinstate && self.role(&dst) == Role::Proxy;
            let Some((dest, created)) = self.table.entry(dst, now) else {
                continue;
            };
            if dest.annotation.ejected.is_some() {
                continue;
            }
            let mono = |unix_ms: i64| {
                self.wall
                    .monotonic_ns(i128::from(unix_ms) * 1_000_000)
                    .min(now)
            };
            let standing = &mut dest.annotation;
            standing.ejection_count = saved.ejection_count;
            standing.probation = saved.probation;
            standing.healthy_since_ns = mono(saved.healthy_since_unix_ms);
            match saved.ejection {
                Some(e) if i128::from(e.until_unix_ms) > now_unix_ms => {
                    let until_ns = self
                        .wall
                        .monotonic_ns(i128::from(e.until_unix_ms) * 1_000_000);
                    standing.ejected = Some(Box::new(Ejected {
                        since_ns: mono(e.since_unix_ms),
                        until_ns,
                        reason: e.reason,
                    }));
                    self.expiries.insert((until_ns, dst));
                    report.restored += 1;
                }
                Some(e) if verify => {
                    // Expired while connmon was down: verify before reinstating.
                    standing.ejected = Some(Box::new(Ejected {
                        since_ns: mono(e.since_unix_ms),
                        until_ns: now,
                        reason: e.reason,
                    }));
                    self.verifying.insert(dst);
                    self.verifications.push(dst);
                    report.restored += 1;
                }
                Some(e) => {
                    standing.probation = true;
                    standing.healthy_since_ns = now;
                    let ejected_ms =
                        u64::try_from(now_unix_ms - i128::from(e.since_unix_ms)).unwrap_or(0);
                    out.push(Decision::Reinstate(Reinstatement {
                        dst: dst.addr,
                        netns: dst.netns,
                        ejected_ms,
                        verified: false,
                        early: false,
                        origin: None,
                        ts: None,
                    }));
                    report.reinstated += 1;
                    self.state_changed = true;
                }
                None => report.history += 1,
            }
            if created {
                self.adopt(dst);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("connmon-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn empty() -> StateFile {
        StateFile {
            version: STATE_VERSION,
            saved_at: "2023-11-14T22:13:20.000000000Z".into(),
            destinations: Vec::new(),
        }
    }

    #[test]
    fn temporaries_of_interrupted_writes_are_removed_on_read() {
        let dir = scratch("stale");
        let path = dir.join("state.json");
        write(&path, &empty()).expect("write");
        let stale = dir.join(".state.json.tmp.4242");
        let other = dir.join(".other.json.tmp.4242");
        let not_a_pid = dir.join(".state.json.tmp.x");
        for f in [&stale, &other, &not_a_pid] {
            fs::write(f, b"{\"version\":1,").expect("plant");
        }
        assert_eq!(read(&path).expect("read"), Some(empty()));
        assert!(!stale.exists(), "a dead writer's temporary file is left");
        assert!(
            other.exists() && not_a_pid.exists(),
            "files that are not ours were removed"
        );
        let _ = fs::remove_dir_all(dir);
    }
}

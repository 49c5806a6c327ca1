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

use super::decision::Reason;

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

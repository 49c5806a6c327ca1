//! Writing the ejection state file off the pipeline's thread.
//!
//! A state-file write ends in two fsyncs, which can take tens of milliseconds; done on
//! the pipeline task it delayed the next eviction by as much (the p99 of detection
//! latency showed it). The pipeline hands the latest state to a writer thread through a
//! one-slot mailbox: a newer state replaces one not yet written, so a burst of
//! ejections costs one write, and the queue can never grow.
//!
//! Writes are at least [`MIN_SPACING`] apart: the first change after a quiet period is
//! written at once, the changes of a sustained stream of decisions (a fleet's verdicts
//! arriving at every host, tens a second) are written together. Each write serialises
//! every ejection and ends in two fsyncs; one per decision cost each of 50 agents on
//! one host more CPU than applying the decision (BENCHMARKS.md, fleet). A SIGKILL can
//! lose at most the last [`MIN_SPACING`] of changes; a normal exit writes the latest.

use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::policy::state::{self, StateFile};

/// Two writes of the state file are at least this far apart (the latest state wins).
pub(crate) const MIN_SPACING: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Mailbox {
    latest: Option<StateFile>,
    closed: bool,
}

/// The writer thread and its mailbox.
pub(crate) struct StateWriter {
    shared: Arc<(Mutex<Mailbox>, Condvar)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StateWriter {
    pub(crate) fn spawn(path: PathBuf) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Mailbox::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = thread::Builder::new().name("connmon-state".into()).spawn(move || {
            let (lock, ready) = &*theirs;
            let mut last_write: Option<Instant> = None;
            loop {
                let next = {
                    let mut mailbox = lock.lock().unwrap_or_else(|e| e.into_inner());
                    // A state waits for [`MIN_SPACING`] after the last write (a newer
                    // one replaces it meanwhile); closing writes it at once.
                    while !mailbox.closed {
                        let wait = match (&mailbox.latest, last_write) {
                            (None, _) => None,
                            (Some(_), Some(at)) => {
                                (at + MIN_SPACING).checked_duration_since(Instant::now())
                            }
                            (Some(_), None) => break,
                        };
                        mailbox = match wait {
                            None if mailbox.latest.is_some() => break,
                            None => ready.wait(mailbox).unwrap_or_else(|e| e.into_inner()),
                            Some(wait) => {
                                ready
                                    .wait_timeout(mailbox, wait)
                                    .unwrap_or_else(|e| e.into_inner())
                                    .0
                            }
                        };
                    }
                    match mailbox.latest.take() {
                        Some(file) => file,
                        None => return,
                    }
                };
                if let Err(err) = state::write(&path, &next) {
                    tracing::warn!(path = %path.display(), %err, "could not write the state file; ejections will not survive a restart");
                }
                last_write = Some(Instant::now());
            }
        })?;
        Ok(StateWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `file` for writing, replacing any state not yet written.
    pub(crate) fn submit(&self, file: StateFile) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).latest = Some(file);
        ready.notify_one();
    }

    /// Writes what is pending and stops the thread.
    pub(crate) fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize) -> StateFile {
        StateFile {
            version: state::STATE_VERSION,
            saved_at: format!("t{n}"),
            destinations: Vec::new(),
        }
    }

    #[test]
    fn the_last_submitted_state_is_on_disk_after_finish() {
        let dir = std::env::temp_dir().join(format!("connmon-persist-{}", std::process::id()));
        let path = dir.join("state.json");
        let writer = StateWriter::spawn(path.clone()).unwrap();
        for n in 0..50 {
            writer.submit(file(n));
        }
        writer.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"t49\""), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn saved_at(path: &std::path::Path) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["saved_at"].as_str().map(str::to_owned)
    }

    #[test]
    fn a_quiet_change_is_written_at_once_and_a_stream_of_them_together() {
        let dir = std::env::temp_dir().join(format!("connmon-spacing-{}", std::process::id()));
        let path = dir.join("state.json");
        let writer = StateWriter::spawn(path.clone()).unwrap();
        writer.submit(file(0));
        let deadline = Instant::now() + Duration::from_secs(30);
        while saved_at(&path).as_deref() != Some("t0") {
            assert!(Instant::now() < deadline, "the first state was not written");
            thread::sleep(Duration::from_millis(5));
        }
        // Right after a write, newer states wait for the spacing (replacing each other);
        // the last one is written without any further submit.
        for n in 1..20 {
            writer.submit(file(n));
        }
        while saved_at(&path).as_deref() != Some("t19") {
            assert!(
                Instant::now() < deadline,
                "the latest state was not written: {:?}",
                saved_at(&path)
            );
            thread::sleep(Duration::from_millis(5));
        }
        writer.finish();
        let _ = std::fs::remove_dir_all(dir);
    }
}

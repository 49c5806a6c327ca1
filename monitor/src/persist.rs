//! Writing the ejection state file off the pipeline's thread.
//!
//! A state-file write ends in two fsyncs, which can take tens of milliseconds; done on
//! the pipeline task it delayed the next eviction by as much (the p99 of detection
//! latency showed it). The pipeline hands the latest state to a writer thread through a
//! one-slot mailbox: a newer state replaces one not yet written, so a burst of
//! ejections costs one write, and the queue can never grow.

use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    thread,
};

use crate::policy::state::{self, StateFile};

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
            loop {
                let next = {
                    let mut mailbox = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while mailbox.latest.is_none() && !mailbox.closed {
                        mailbox = ready.wait(mailbox).unwrap_or_else(|e| e.into_inner());
                    }
                    match mailbox.latest.take() {
                        Some(file) => file,
                        None => return,
                    }
                };
                if let Err(err) = state::write(&path, &next) {
                    tracing::warn!(path = %path.display(), %err, "could not write the state file; ejections will not survive a restart");
                }
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
}

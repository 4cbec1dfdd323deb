//! Wakes the log reader when files appear, move or disappear in the
//! watched directories (Linux inotify: `IN_CREATE`, `IN_MOVED_TO`,
//! `IN_MOVED_FROM`, `IN_DELETE`), so new and rotated files are picked up at
//! once rather than at the next `poll_interval`. Growth of known files is
//! still found by polling, which also remains the fallback when inotify is
//! unavailable (its limits reached, an unsupported filesystem): then
//! everything works at the polling interval.

use std::collections::{BTreeSet, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::io::unix::AsyncFd;

/// An inotify instance watching directories.
#[derive(Debug)]
pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    watched: Mutex<HashSet<PathBuf>>,
}

impl Watcher {
    /// Watches `dirs`; `None` (polling only) if inotify is unavailable.
    /// Must be called inside a Tokio runtime.
    pub fn new(dirs: &BTreeSet<PathBuf>) -> Option<Watcher> {
        let fd = match inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::info!(error = %e, "inotify unavailable; new files are found by polling");
                return None;
            }
        };
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it
        // (and so keeps it open, naming the same inotify instance) for its
        // whole lifetime; nothing else can close it.
        let fd = match unsafe { AsyncFd::register(fd) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::info!(error = %e, "inotify unusable; new files are found by polling");
                return None;
            }
        };
        let w = Watcher { fd, watched: Mutex::new(HashSet::new()) };
        w.update(dirs);
        Some(w)
    }

    /// Adds watches for directories not watched yet. A directory that
    /// cannot be watched is left to polling.
    pub fn update(&self, dirs: &BTreeSet<PathBuf>) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for d in dirs {
            if watched.contains(d) {
                continue;
            }
            let flags = WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::MOVED_FROM | WatchFlags::DELETE;
            match inotify::add_watch(self.fd.get_ref(), d.as_path(), flags) {
                Ok(_) => {
                    watched.insert(d.clone());
                }
                Err(e) => tracing::debug!(dir = %d.display(), error = %e, "cannot watch directory; polling it"),
            }
        }
    }

    /// Resolves when something changed in a watched directory (events are
    /// consumed; what changed is found by the next poll).
    pub async fn changed(&self) {
        let mut buf = [0u8; 4096];
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut any = false;
            loop {
                match rustix::io::read(self.fd.get_ref(), &mut buf) {
                    Ok(n) if n > 0 => any = true,
                    Ok(_) => break,
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => return std::future::pending().await,
                }
            }
            if any {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_on_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watcher::new(&BTreeSet::from([dir.path().to_path_buf()])).expect("inotify on Linux");
        let quiet = tokio::time::timeout(Duration::from_millis(100), w.changed()).await;
        assert!(quiet.is_err(), "no event yet");
        std::fs::write(dir.path().join("new.log"), "x\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed()).await.expect("woken by the new file");
    }
}

//! One agent per outbox. Two agents on one outbox (a copied config with only the socket
//! changed) take each other's MQTT session, and each sends what the other queued: 2 000
//! events made 2 020 duplicate deliveries. The outbox's directory gets a lock file,
//! `outbox.db.lock`, holding an exclusive `flock` for as long as the agent runs and its
//! pid as text; a second agent is refused with that pid. The kernel drops the lock when
//! the process ends, however it ends: nothing is left to clean up after kill -9. The file
//! is opened as [`crate::own_file`] says: never through a symlink.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::OutboxError;

/// Held while the agent runs; dropping it releases the lock.
#[derive(Debug)]
pub struct OutboxLock {
    _file: File,
}

pub fn lock_path(outbox: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", outbox.display()))
}

/// Takes the outbox's lock, or says which process holds it.
pub fn acquire(outbox: &Path) -> Result<OutboxLock, OutboxError> {
    let path = lock_path(outbox);
    let io = |source: std::io::Error| OutboxError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Never through a symlink: the agent writes only files of its own.
    let mut file = crate::own_file::open_own(&path).map_err(io)?;
    // SAFETY: flock on a descriptor this function owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(OutboxError::Locked { path: outbox.display().to_string(), pid: pid.trim().to_string() });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(OutboxLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox.db");
        let first = acquire(&outbox).unwrap();
        // flock locks belong to the open file description: a second open conflicts even
        // within one process.
        match acquire(&outbox) {
            Err(OutboxError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(acquire(&outbox).is_ok());
    }

    #[test]
    fn a_lock_file_that_is_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox.db");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::os::unix::fs::symlink(&victim, lock_path(&outbox)).unwrap();
        assert!(acquire(&outbox).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }
}

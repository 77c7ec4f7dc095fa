//! What the filesystem says about the outbox's files: free space, and how big the
//! database and its WAL are. A leaf: the writer asks it through [`Disk`], so its full-disk
//! rules can be tested with a [`Disk`] that reports whatever a test needs.

use std::path::{Path, PathBuf};

/// The outbox's view of its filesystem.
pub trait Disk: Send {
    /// Free bytes on the filesystem holding the outbox, if known.
    fn free_bytes(&self) -> Option<u64>;
    /// The WAL's size in bytes (0 when absent).
    fn wal_bytes(&self) -> u64;
}

/// The real filesystem under the outbox at `path`.
#[derive(Clone, Debug)]
pub struct RealDisk {
    pub path: PathBuf,
}

impl Disk for RealDisk {
    fn free_bytes(&self) -> Option<u64> {
        free_disk(&self.path)
    }

    fn wal_bytes(&self) -> u64 {
        wal_bytes(&self.path)
    }
}

/// Free bytes on the filesystem holding `path` (a file or directory).
pub fn free_disk(path: &Path) -> Option<u64> {
    let dir = if path.is_dir() { path } else { path.parent().filter(|p| !p.as_os_str().is_empty())? };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The size of the WAL beside the database at `path`.
pub fn wal_bytes(path: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", path.display())).map(|m| m.len()).unwrap_or(0)
}

/// The outbox's size on disk: the database file plus its WAL.
pub fn bytes_on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) + wal_bytes(path)
}

/// Bytes this process has caused to be written to block devices since it started
/// (`write_bytes` of `/proc/self/io`: WAL, checkpoints and the fast log included), the
/// figure that wears a robot's flash.
pub fn written_by_agent() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok())
}

/// `written` bytes over `uptime`, as a rate per day.
pub fn per_day(written: u64, uptime: std::time::Duration) -> u64 {
    let secs = uptime.as_secs_f64().max(1.0);
    (written as f64 * 86_400.0 / secs) as u64
}

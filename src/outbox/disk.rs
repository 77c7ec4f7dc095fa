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

/// What the process had written when the agent started (see [`mark_agent_start`]).
static BASELINE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// A daily rate is only extrapolated after this much uptime: start-up writes (opening
/// the outbox, a checkpoint) over a second of uptime would read as gigabytes a day.
pub const RATE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn process_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok())
}

/// Takes the baseline: what the process wrote before the agent started is not the
/// agent's (under `cargo run -- demo`, it was the build). Called once, at start.
pub fn mark_agent_start() {
    let _ = BASELINE.set(process_written().unwrap_or(0));
}

/// Bytes the agent has caused to be written to block devices since it started
/// (`write_bytes` of `/proc/self/io`: WAL, checkpoints and the fast log included), the
/// figure that wears a robot's flash.
pub fn written_by_agent() -> Option<u64> {
    Some(process_written()?.saturating_sub(BASELINE.get().copied().unwrap_or(0)))
}

/// Samples of what the agent has written, a minute apart, for the last hour: the daily
/// rate `status` shows is the recent one, not the average since start (which start-up's
/// writes dominate for hours: 76.7 MiB a day shown for an agent writing 12).
static SAMPLES: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// How often the writer takes a sample.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// Takes a sample (the writer, every [`SAMPLE_EVERY`]) and forgets those past the hour.
pub fn sample_written() {
    let now = std::time::Instant::now();
    let Some(written) = written_by_agent() else { return };
    let Ok(mut samples) = SAMPLES.lock() else { return };
    samples.push_back((now, written));
    while samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
        samples.pop_front();
    }
}

/// The daily rate over the last hour (or since the first sample, if that is at least
/// [`RATE_AFTER`] ago), and the window it was measured over.
pub fn recent_per_day(written: u64) -> Option<(u64, std::time::Duration)> {
    let samples = SAMPLES.lock().ok()?;
    rate_since(samples.front().copied(), written, std::time::Instant::now())
}

fn rate_since(
    oldest: Option<(std::time::Instant, u64)>,
    written: u64,
    now: std::time::Instant,
) -> Option<(u64, std::time::Duration)> {
    let (t, then) = oldest?;
    let window = now.duration_since(t);
    (window >= RATE_AFTER).then(|| (per_day(written.saturating_sub(then), window).unwrap_or(0), window))
}

/// `written` bytes over `uptime`, as a rate per day; none before [`RATE_AFTER`].
pub fn per_day(written: u64, uptime: std::time::Duration) -> Option<u64> {
    if uptime < RATE_AFTER {
        return None;
    }
    Some((written as f64 * 86_400.0 / uptime.as_secs_f64()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_recent_rate_leaves_start_up_out() {
        let now = std::time::Instant::now();
        // 70 MiB at start, then 1 MiB over the last hour: the rate is the hour's.
        let hour_ago = Some((now - Duration::from_secs(3600), 70 << 20));
        let (rate, window) = rate_since(hour_ago, (70 << 20) + (1 << 20), now).unwrap();
        assert_eq!(window, Duration::from_secs(3600));
        assert_eq!(rate, 24 << 20);
        assert!(rate_since(Some((now - Duration::from_secs(60), 0)), 1, now).is_none(), "too short a window");
        assert!(rate_since(None, 1, now).is_none());
    }

    #[test]
    fn a_daily_rate_waits_for_enough_uptime() {
        assert_eq!(per_day(8192, Duration::from_secs(1)), None, "start-up writes are not a rate");
        assert_eq!(per_day(1 << 20, Duration::from_secs(599)), None);
        assert_eq!(per_day(600, Duration::from_secs(600)), Some(86_400));
    }
}

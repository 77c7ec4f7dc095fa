//! The poison-message breaker: the defence against the decoder bug nobody has found yet.
//!
//! A message that makes the agent die while it decodes or routes it (a panic, an abort,
//! an allocation that fails) is not acked, so the broker sends it again at the next
//! start, and the agent dies again: a crash loop that holds back everything behind it.
//! SQS's `maxReceiveCount` and dead-letter queue is the pattern; here:
//!
//! - Before a message is decoded, its key (SHA-256 of topic and payload) is written to a
//!   small file, [`MARK_FILE`], and the mark set; after, the mark is cleared. Each is one
//!   `pwrite` into the page cache, which the kernel keeps however the process dies. (It
//!   was a shared mapping until 2026-12-07: a file truncated under a running agent then
//!   killed it with SIGBUS at the next message. `pwrite` past the end just grows it.)
//! - A crash sets the mark to *crashed*: panics abort in release builds, and a failed
//!   allocation and a stack overflow abort too, so a `SIGABRT` handler (a single store,
//!   async-signal-safe) records it on the way down.
//! - At start, a *crashed* mark makes its message a suspect at once. A mark left merely
//!   set means the agent was killed from outside mid-decode (kill -9, the OOM killer, a
//!   watchdog): that is one strike, and a second death on the same message makes it a
//!   suspect. So a kill -9 that happens to land in a decode never quarantines a good
//!   message, and a message that gets the agent killed twice is stopped all the same.
//! - A suspect is quarantined without being decoded, with the reason "the agent stopped
//!   while decoding it", and forgotten. It is kept whole, so `quarantine release` can try
//!   it again after an upgrade. A struck message that decodes fine loses its strike.
//!
//! The file lives in `$RUNTIME_DIRECTORY` under systemd (tmpfs: no flash is written;
//! the unit keeps it across restarts with `RuntimeDirectoryPreserve=restart`), else
//! beside the outbox. If it cannot be opened the agent runs without a breaker and says so.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use sha2::{Digest, Sha256};

/// The file's name, in the runtime directory or beside the outbox (`outbox.db-decoding`).
pub const MARK_FILE: &str = "decoding";
/// Most suspects and strikes remembered.
pub const SUSPECTS: usize = 8;

const MAGIC: &[u8; 8] = b"fhbrk\x00\x00\x02";
const LEN: usize = 4096;
// Layout: magic, state, the mark's key and topic (length, bytes), then SUSPECTS ×
// (kind, key, topic length, topic).
const STATE_AT: usize = 8;
const IDLE: u8 = 0;
const DECODING: u8 = 1;
const CRASHED: u8 = 2;
const MARK_AT: usize = 9;
const TOPIC_MAX: usize = 200;
const ENTRY: usize = 32 + 2 + TOPIC_MAX;
const SUSPECTS_AT: usize = MARK_AT + ENTRY;
const SUSPECT_ENTRY: usize = 1 + ENTRY;

/// The state byte of the breaker now in use, and its file, for the `SIGABRT` handler.
static STATE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static STATE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The file's bytes in memory, and the file they are written back to, range by range.
struct Image {
    bytes: Box<[u8; LEN]>,
    file: std::fs::File,
}

impl Image {
    /// Writes `range` of the image to the file (the page cache: no fsync).
    fn write_back(&self, range: std::ops::Range<usize>) {
        use std::os::unix::fs::FileExt;
        if let Err(e) = self.file.write_all_at(&self.bytes[range.clone()], range.start as u64) {
            tracing::debug!(error = %e, "Cannot write the breaker's mark.");
        }
    }
}

impl std::ops::Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..]
    }
}

impl std::ops::DerefMut for Image {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..]
    }
}

/// A message's key: what the breaker remembers of it.
pub type Key = [u8; 32];

/// The key of a message on `topic` with `payload`.
pub fn key(topic: &str, payload: &[u8]) -> Key {
    let mut h = Sha256::new();
    h.update((topic.len() as u64).to_le_bytes());
    h.update(topic.as_bytes());
    h.update(payload);
    h.finalize().into()
}

/// What the breaker holds against a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The agent crashed on it, or was killed on it twice: quarantine it undecoded.
    Suspect = 1,
    /// The agent was killed from outside once while decoding it.
    Strike = 2,
}

/// One message the breaker remembers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub kind: Kind,
    pub key: Key,
    /// Its topic (cut at 200 bytes), for the log.
    pub topic: String,
}

pub struct Breaker {
    map: Option<Image>,
    remembered: Vec<Suspect>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("path", &self.path).field("remembered", &self.remembered.len()).finish()
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        if let Some(map) = self.map.as_mut() {
            let state = map[STATE_AT..].as_mut_ptr();
            if STATE.compare_exchange(state, std::ptr::null_mut(), Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                STATE_FD.store(-1, Ordering::SeqCst);
            }
        }
    }
}

impl Breaker {
    /// Where the file goes: `$RUNTIME_DIRECTORY` (systemd), else beside the outbox.
    pub fn default_path(outbox: &Path) -> PathBuf {
        match std::env::var_os("RUNTIME_DIRECTORY").and_then(|d| std::env::split_paths(&d).next()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(MARK_FILE),
            _ => {
                let mut p = outbox.as_os_str().to_owned();
                p.push("-");
                p.push(MARK_FILE);
                PathBuf::from(p)
            }
        }
    }

    /// A breaker that remembers nothing (tests, or when the file cannot be opened).
    pub fn disabled() -> Breaker {
        Breaker { map: None, remembered: Vec::new(), path: None }
    }

    /// Opens (or creates) the file at `path` and reads what the last run left.
    pub fn open(path: &Path) -> Breaker {
        match Self::try_open(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "Cannot open the poison-message breaker's file; a message that kills the agent while it is decoded will do so at every start.");
                Breaker::disabled()
            }
        }
    }

    fn try_open(path: &Path) -> std::io::Result<Breaker> {
        use std::os::unix::fs::FileExt;
        // Never through a symlink: the marks written into another file would damage it.
        let file = crate::own_file::open_own(path)?;
        let mut bytes = Box::new([0u8; LEN]);
        // A short file (new, or truncated) reads as zeros past its end.
        let mut read = 0;
        while read < LEN {
            match file.read_at(&mut bytes[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        let mut map = Image { bytes, file };
        if &map[..8] != MAGIC {
            map.fill(0);
            map[..8].copy_from_slice(MAGIC);
            map.write_back(0..LEN);
        }
        let mut b = Breaker { map: Some(map), remembered: Vec::new(), path: Some(path.to_path_buf()) };
        b.remembered = b.read_remembered();
        let state = b.map.as_ref().map_or(IDLE, |m| m[STATE_AT]);
        if state != IDLE {
            let mut died_on = b.read_entry(MARK_AT, Kind::Suspect);
            let struck_before = b.remembered.iter().any(|r| r.key == died_on.key && r.kind == Kind::Strike);
            died_on.kind = if state == CRASHED || struck_before { Kind::Suspect } else { Kind::Strike };
            match died_on.kind {
                Kind::Suspect => {
                    tracing::warn!(topic = %crate::text::printable(&died_on.topic), crashed = state == CRASHED,
                    "The agent stopped while decoding a message; it will be quarantined without decoding when the broker sends it again.")
                }
                Kind::Strike => tracing::info!(topic = %crate::text::printable(&died_on.topic),
                    "The agent was stopped while decoding a message; if it stops on it once more, the message will be quarantined."),
            }
            b.remembered.retain(|r| r.key != died_on.key);
            b.remembered.push(died_on);
            if b.remembered.len() > SUSPECTS {
                b.remembered.remove(0);
            }
            b.write_remembered();
            if let Some(m) = b.map.as_mut() {
                m[STATE_AT] = IDLE;
                m.write_back(STATE_AT..STATE_AT + 1);
            }
        }
        if let Some(m) = b.map.as_mut() {
            use std::os::fd::AsRawFd;
            STATE_FD.store(m.file.as_raw_fd(), Ordering::SeqCst);
            STATE.store(m[STATE_AT..].as_mut_ptr(), Ordering::SeqCst);
            install_crash_handler();
        }
        Ok(b)
    }

    /// The messages the breaker holds something against.
    pub fn remembered(&self) -> &[Suspect] {
        &self.remembered
    }

    /// If `key` is a suspect, forgets it and returns the reason to quarantine it with.
    pub fn take_suspect(&mut self, key: &Key) -> Option<String> {
        if self.remembered.is_empty() {
            return None;
        }
        let i = self.remembered.iter().position(|s| &s.key == key && s.kind == Kind::Suspect)?;
        self.remembered.remove(i);
        self.write_remembered();
        Some("the agent stopped while decoding it (at an earlier start); quarantined without decoding".into())
    }

    /// Marks `key` as being decoded; [`Breaker::done`] clears it.
    pub fn begin(&mut self, key: &Key, topic: &str) {
        let Some(map) = self.map.as_mut() else { return };
        write_entry(&mut map[MARK_AT..MARK_AT + ENTRY], key, topic);
        map[STATE_AT] = DECODING;
        // The state byte and the mark behind it, in one write.
        map.write_back(STATE_AT..MARK_AT + ENTRY);
    }

    /// The message marked by [`Breaker::begin`] was decoded (or refused) without dying:
    /// a strike against it is lifted.
    pub fn done(&mut self, key: &Key) {
        if let Some(map) = self.map.as_mut() {
            map[STATE_AT] = IDLE;
            map.write_back(STATE_AT..STATE_AT + 1);
        }
        if !self.remembered.is_empty() && self.remembered.iter().any(|r| &r.key == key) {
            self.remembered.retain(|r| &r.key != key);
            self.write_remembered();
        }
    }

    fn read_entry(&self, at: usize, kind: Kind) -> Suspect {
        let map = self.map.as_ref().expect("read only with a map");
        let mut key = [0u8; 32];
        key.copy_from_slice(&map[at..at + 32]);
        let len = usize::from(u16::from_le_bytes([map[at + 32], map[at + 33]])).min(TOPIC_MAX);
        let topic = String::from_utf8_lossy(&map[at + 34..at + 34 + len]).into_owned();
        Suspect { kind, key, topic }
    }

    fn read_remembered(&self) -> Vec<Suspect> {
        let Some(map) = self.map.as_ref() else { return Vec::new() };
        (0..SUSPECTS)
            .map(|i| SUSPECTS_AT + i * SUSPECT_ENTRY)
            .filter_map(|at| match map[at] {
                1 => Some(self.read_entry(at + 1, Kind::Suspect)),
                2 => Some(self.read_entry(at + 1, Kind::Strike)),
                _ => None,
            })
            .collect()
    }

    fn write_remembered(&mut self) {
        let remembered = self.remembered.clone();
        let Some(map) = self.map.as_mut() else { return };
        for i in 0..SUSPECTS {
            let at = SUSPECTS_AT + i * SUSPECT_ENTRY;
            match remembered.get(i) {
                Some(s) => {
                    write_entry(&mut map[at + 1..at + SUSPECT_ENTRY], &s.key, &s.topic);
                    map[at] = s.kind as u8;
                }
                None => map[at] = 0,
            }
        }
        map.write_back(SUSPECTS_AT..SUSPECTS_AT + SUSPECTS * SUSPECT_ENTRY);
    }
}

/// On `SIGABRT` (a panic in a release build, a failed allocation, a stack overflow, or
/// one sent from outside: systemd's watchdog sends it to a hung agent), a mark that is
/// set becomes *crashed*; then the process dies of the signal, as it would have without
/// the handler. abort(3) would raise it again by itself; a signal from outside would not,
/// and a hung agent would live on until SIGKILL, with no core dump.
fn install_crash_handler() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        extern "C" fn on_abort(_: libc::c_int) {
            let state = STATE.load(Ordering::SeqCst);
            let fd = STATE_FD.load(Ordering::SeqCst);
            // SAFETY: STATE is null or points into the live image (cleared before it is
            // freed), FD is its open file or -1; a store and pwrite are async-signal-safe.
            unsafe {
                if !state.is_null() && *state == DECODING {
                    *state = CRASHED;
                    if fd >= 0 {
                        libc::pwrite(fd, state.cast(), 1, STATE_AT as libc::off_t);
                    }
                }
            }
            // SA_RESETHAND restored the default action; SA_NODEFER lets it land now.
            // SAFETY: raise is async-signal-safe.
            unsafe {
                libc::raise(libc::SIGABRT);
            }
        }
        // SAFETY: a sigaction with a handler that only does the store above.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_ONSTACK | libc::SA_RESETHAND | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
        }
    });
}

/// Test builds only: `FLEETHOOK_TEST_ABORT_ON=TEXT` makes the agent abort, as a release
/// build does on a panic, while it decodes a payload that contains TEXT (a decoder bug
/// on purpose, for the breaker's test). Release builds have no such hook.
#[cfg(debug_assertions)]
pub fn abort_if_asked(payload: &[u8]) {
    static NEEDLE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let needle = NEEDLE.get_or_init(|| std::env::var_os("FLEETHOOK_TEST_ABORT_ON").map(|v| v.into_encoded_bytes()));
    if let Some(n) = needle
        && !n.is_empty()
        && payload.windows(n.len()).any(|w| w == n.as_slice())
    {
        eprintln!("FLEETHOOK_TEST_ABORT_ON: aborting while decoding, on purpose");
        std::process::abort();
    }
    // `FLEETHOOK_TEST_STALL_ON=TEXT`: a decode that hangs for 5 s (a hung agent, for the
    // watchdog's SIGABRT in the breaker's test).
    static STALL: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let stall = STALL.get_or_init(|| std::env::var_os("FLEETHOOK_TEST_STALL_ON").map(|v| v.into_encoded_bytes()));
    if let Some(n) = stall
        && !n.is_empty()
        && payload.windows(n.len()).any(|w| w == n.as_slice())
    {
        eprintln!("FLEETHOOK_TEST_STALL_ON: hanging while decoding, on purpose");
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn abort_if_asked(_payload: &[u8]) {}

fn write_entry(slot: &mut [u8], key: &Key, topic: &str) {
    let mut len = topic.len().min(TOPIC_MAX);
    while !topic.is_char_boundary(len) {
        len -= 1;
    }
    slot[..32].copy_from_slice(key);
    slot[32..34].copy_from_slice(&(len as u16).to_le_bytes());
    slot[34..34 + len].copy_from_slice(&topic.as_bytes()[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash_while(b: &mut Breaker, key: &Key, topic: &str) {
        b.begin(key, topic);
        // What the SIGABRT handler does.
        let map = b.map.as_mut().unwrap();
        map[STATE_AT] = CRASHED;
        map.write_back(STATE_AT..STATE_AT + 1);
    }

    #[test]
    fn a_crash_while_decoding_makes_a_suspect_at_the_next_start_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoding");
        let fine = key("robot/t", b"fine");
        let poison = key("robot/t", b"boom");
        {
            let mut b = Breaker::open(&path);
            assert!(b.remembered().is_empty());
            b.begin(&fine, "robot/t");
            b.done(&fine);
            crash_while(&mut b, &poison, "robot/t");
        }
        let mut b = Breaker::open(&path);
        assert_eq!(b.remembered(), [Suspect { kind: Kind::Suspect, key: poison, topic: "robot/t".into() }]);
        assert!(b.take_suspect(&fine).is_none());
        drop(b);
        // Still a suspect after another start before the message came back.
        let mut b = Breaker::open(&path);
        assert!(b.take_suspect(&poison).unwrap().contains("stopped while decoding"));
        drop(b);
        assert!(Breaker::open(&path).remembered().is_empty(), "forgotten once quarantined");
    }

    /// kill -9 landing in a decode is a strike, not a quarantine; twice on the same
    /// message is.
    #[test]
    fn a_kill_from_outside_is_a_strike_and_two_make_a_suspect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoding");
        let m = key("robot/t", b"slow");
        Breaker::open(&path).begin(&m, "robot/t");
        let mut b = Breaker::open(&path);
        assert_eq!(b.remembered()[0].kind, Kind::Strike);
        assert!(b.take_suspect(&m).is_none(), "decoded again, not quarantined");
        b.begin(&m, "robot/t");
        drop(b);
        let mut b = Breaker::open(&path);
        assert_eq!(b.remembered()[0].kind, Kind::Suspect);
        assert!(b.take_suspect(&m).is_some());
        // A strike is lifted by a decode that ends.
        b.begin(&m, "robot/t");
        drop(b);
        let mut b = Breaker::open(&path);
        b.begin(&m, "robot/t");
        b.done(&m);
        assert!(b.remembered().is_empty());
    }

    #[test]
    fn remembered_messages_are_bounded_and_topics_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoding");
        let long = "é".repeat(300);
        for i in 0..(SUSPECTS + 3) {
            let mut b = Breaker::open(&path);
            crash_while(&mut b, &key(&long, &[i as u8]), &long);
        }
        let b = Breaker::open(&path);
        assert_eq!(b.remembered().len(), SUSPECTS);
        assert_eq!(b.remembered()[SUSPECTS - 1].key, key(&long, &[(SUSPECTS + 2) as u8]));
        assert!(b.remembered()[0].topic.len() <= TOPIC_MAX);
        drop(b);
        // A file that is not ours is started afresh, not trusted.
        std::fs::write(&path, vec![0xffu8; LEN]).unwrap();
        assert!(Breaker::open(&path).remembered().is_empty());
    }

    #[test]
    fn the_file_goes_to_the_runtime_directory_else_beside_the_outbox() {
        let beside = Breaker::default_path(Path::new("/var/lib/fleethook/outbox.db"));
        let expected = match std::env::var_os("RUNTIME_DIRECTORY") {
            Some(d) => PathBuf::from(d).join(MARK_FILE),
            None => PathBuf::from("/var/lib/fleethook/outbox.db-decoding"),
        };
        assert_eq!(beside, expected);
    }
}

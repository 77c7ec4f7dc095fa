//! The poison-message breaker: the defence against the decoder bug nobody has found yet.
//!
//! A message that makes the agent die while it decodes or routes it (a panic, an abort,
//! the kernel's OOM killer) is not acked, so the broker sends it again at the next start,
//! and the agent dies again: a crash loop that holds back everything behind it. SQS's
//! `maxReceiveCount` and dead-letter queue is the pattern; here:
//!
//! - Before a message is decoded, its key (SHA-256 of topic and payload) is written to a
//!   small memory-mapped file, [`MARK_FILE`]; after, the mark is cleared. Both are stores
//!   to shared memory, no system call: the kernel keeps the page when the process dies
//!   however it dies.
//! - At start, a mark still set names the message the agent died on. It moves to the
//!   file's suspects (at most [`SUSPECTS`], oldest dropped).
//! - A message whose key is a suspect is quarantined without being decoded, with the
//!   reason "the agent stopped while decoding it", and leaves the suspects. It is kept
//!   whole, so `quarantine release` can try it again after an upgrade.
//!
//! The file lives in `$RUNTIME_DIRECTORY` under systemd (tmpfs: no flash is written;
//! the unit keeps it across restarts with `RuntimeDirectoryPreserve=restart`), else
//! beside the outbox. If it cannot be opened the agent runs without a breaker and says so.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file's name, in the runtime directory or beside the outbox (`outbox.db-decoding`).
pub const MARK_FILE: &str = "decoding";
/// Most suspects remembered.
pub const SUSPECTS: usize = 8;

const MAGIC: &[u8; 8] = b"fhbrk\x00\x00\x01";
const LEN: usize = 4096;
// Layout: magic, state (0 idle, 1 decoding), the mark's key, its topic (length, bytes),
// then SUSPECTS × (used flag, key, topic length, topic).
const STATE_AT: usize = 8;
const MARK_AT: usize = 9;
const TOPIC_MAX: usize = 200;
const ENTRY: usize = 32 + 2 + TOPIC_MAX;
const SUSPECTS_AT: usize = MARK_AT + ENTRY;
const SUSPECT_ENTRY: usize = 1 + ENTRY;

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

/// One suspect: a message the agent died on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub key: Key,
    /// Its topic (cut at 200 bytes), for the log.
    pub topic: String,
}

pub struct Breaker {
    map: Option<memmap2::MmapMut>,
    suspects: Vec<Suspect>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("path", &self.path).field("suspects", &self.suspects.len()).finish()
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
        Breaker { map: None, suspects: Vec::new(), path: None }
    }

    /// Opens (or creates) the file at `path`; a mark left set becomes a suspect.
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
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() != LEN as u64 {
            file.set_len(0)?;
            file.set_len(LEN as u64)?;
        }
        // SAFETY: the file is the agent's own, sized above, and only this process maps
        // it; a mapping of a file another process truncates would fault, which nothing
        // but an operator deleting it under a running agent does.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        if &map[..8] != MAGIC {
            map.fill(0);
            map[..8].copy_from_slice(MAGIC);
        }
        let mut b = Breaker { map: Some(map), suspects: Vec::new(), path: Some(path.to_path_buf()) };
        b.suspects = b.read_suspects();
        if b.map.as_ref().is_some_and(|m| m[STATE_AT] == 1) {
            let died_on = b.read_entry(MARK_AT);
            tracing::warn!(topic = %crate::text::printable(&died_on.topic),
                "The agent stopped while decoding a message; it will be quarantined without decoding when the broker sends it again.");
            b.suspects.retain(|s| s.key != died_on.key);
            b.suspects.push(died_on);
            if b.suspects.len() > SUSPECTS {
                b.suspects.remove(0);
            }
            b.write_suspects();
            if let Some(m) = b.map.as_mut() {
                m[STATE_AT] = 0;
            }
        }
        Ok(b)
    }

    /// The messages the agent died on and has not met again.
    pub fn suspects(&self) -> &[Suspect] {
        &self.suspects
    }

    /// If `key` is a suspect, forgets it and returns the reason to quarantine it with.
    pub fn take_suspect(&mut self, key: &Key) -> Option<String> {
        let i = self.suspects.iter().position(|s| &s.key == key)?;
        self.suspects.remove(i);
        self.write_suspects();
        Some("the agent stopped while decoding it (at an earlier start); quarantined without decoding".into())
    }

    /// Marks `key` as being decoded; [`Breaker::done`] clears it.
    pub fn begin(&mut self, key: &Key, topic: &str) {
        let Some(map) = self.map.as_mut() else { return };
        write_entry(&mut map[MARK_AT..MARK_AT + ENTRY], key, topic);
        map[STATE_AT] = 1;
    }

    /// The message marked by [`Breaker::begin`] was decoded (or refused) without dying.
    pub fn done(&mut self) {
        if let Some(map) = self.map.as_mut() {
            map[STATE_AT] = 0;
        }
    }

    fn read_entry(&self, at: usize) -> Suspect {
        let map = self.map.as_ref().expect("read only with a map");
        let mut key = [0u8; 32];
        key.copy_from_slice(&map[at..at + 32]);
        let len = usize::from(u16::from_le_bytes([map[at + 32], map[at + 33]])).min(TOPIC_MAX);
        let topic = String::from_utf8_lossy(&map[at + 34..at + 34 + len]).into_owned();
        Suspect { key, topic }
    }

    fn read_suspects(&self) -> Vec<Suspect> {
        let Some(map) = self.map.as_ref() else { return Vec::new() };
        (0..SUSPECTS)
            .map(|i| SUSPECTS_AT + i * SUSPECT_ENTRY)
            .filter(|at| map[*at] == 1)
            .map(|at| self.read_entry(at + 1))
            .collect()
    }

    fn write_suspects(&mut self) {
        let suspects = self.suspects.clone();
        let Some(map) = self.map.as_mut() else { return };
        for i in 0..SUSPECTS {
            let at = SUSPECTS_AT + i * SUSPECT_ENTRY;
            match suspects.get(i) {
                Some(s) => {
                    write_entry(&mut map[at + 1..at + SUSPECT_ENTRY], &s.key, &s.topic);
                    map[at] = 1;
                }
                None => map[at] = 0,
            }
        }
    }
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

    #[test]
    fn a_mark_left_set_is_a_suspect_at_the_next_start_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoding");
        let poison = key("robot/t", b"boom");
        {
            let mut b = Breaker::open(&path);
            assert!(b.suspects().is_empty());
            b.begin(&key("robot/t", b"fine"), "robot/t");
            b.done();
            b.begin(&poison, "robot/t");
            // Dies here: the mapping is dropped with the mark set.
        }
        let mut b = Breaker::open(&path);
        assert_eq!(b.suspects(), [Suspect { key: poison, topic: "robot/t".into() }]);
        assert!(b.take_suspect(&key("robot/t", b"fine")).is_none());
        drop(b);
        // Still a suspect after another start before the message came back.
        let mut b = Breaker::open(&path);
        assert!(b.take_suspect(&poison).unwrap().contains("stopped while decoding"));
        drop(b);
        assert!(Breaker::open(&path).suspects().is_empty(), "forgotten once quarantined");
    }

    #[test]
    fn suspects_are_bounded_and_topics_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decoding");
        let long = "é".repeat(300);
        for i in 0..(SUSPECTS + 3) {
            let mut b = Breaker::open(&path);
            b.begin(&key(&long, &[i as u8]), &long);
        }
        let b = Breaker::open(&path);
        assert_eq!(b.suspects().len(), SUSPECTS);
        assert_eq!(b.suspects()[SUSPECTS - 1].key, key(&long, &[(SUSPECTS + 2) as u8]));
        assert!(b.suspects()[0].topic.len() <= TOPIC_MAX);
        // A file that is not ours is started afresh, not trusted.
        std::fs::write(&path, vec![0xffu8; LEN]).unwrap();
        assert!(Breaker::open(&path).suspects().is_empty());
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

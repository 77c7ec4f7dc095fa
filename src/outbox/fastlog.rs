//! The fast log: what the fast path delivered from memory, appended to a plain file next
//! to the outbox (`outbox.db-fast`) before the event's MQTT message is acked.
//!
//! # Why a file of its own
//!
//! An event the endpoint took at once is never stored as an event; what the outbox keeps
//! of it is its audit rows, its counts and its dedupe key. Committing those per event
//! would cost whole B-tree pages per commit, the very flash wear the fast path exists to
//! avoid, and waiting for a commit before each ack would let the broker's small in-flight
//! window (20 messages in mosquitto's default) throttle ingest. So:
//!
//! 1. Each delivered event is one JSON line, appended with `write(2)` and never fsync'd.
//!    The page cache survives the agent's death, so after kill -9 every line is there.
//! 2. The writer copies the lines into the tables in large, rare commits (see the
//!    writer's `FAST_FLUSH_*`) that are not fsync'd either (`synchronous = NORMAL` for that
//!    transaction); `meta.fast_applied` records the last line copied, in the same commit.
//! 3. At start the writer copies any line newer than `fast_applied`, then empties the log.
//!
//! After a power cut the tail of the log and the last unsynced commits can be gone: those
//! events were delivered but lose their audit rows and counts, and if the broker sends
//! their messages again (it does for any not yet acked) they are sent again — with the
//! same ids where the route names `dedupe`. A torn last line is skipped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::{AuditRow, FastDone};

/// One line of the log: a [`FastDone`] without what every such entry has in common
/// (first attempt, outcome `delivered`, no error), in a compact form — at a robot's usual
/// rate the log's own bytes are half of what the fast path writes.
/// One delivery of a line: (subscription, delivery id, event type, started ms, duration
/// ms, status, snippet).
type Delivered = (String, String, String, i64, i64, Option<u16>, Option<String>);

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    l: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<i64>,
    a: Vec<Delivered>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    j: Option<u64>,
}

impl Line {
    fn of(done: &FastDone) -> Line {
        let a = done
            .audits
            .iter()
            .map(|r| {
                let snippet = r.snippet.clone().filter(|s| !s.is_empty());
                (
                    r.subscription.clone(),
                    r.delivery_id.clone(),
                    r.event_type.clone(),
                    r.started_ms,
                    r.duration_ms,
                    r.status,
                    snippet,
                )
            })
            .collect();
        Line { l: done.l, k: done.key, a, j: done.j }
    }

    fn done(self) -> FastDone {
        let audits = self
            .a
            .into_iter()
            .map(|(subscription, delivery_id, event_type, started_ms, duration_ms, status, snippet)| AuditRow {
                subscription,
                delivery_id,
                event_type,
                attempt: 1,
                started_ms,
                duration_ms,
                status,
                error_kind: None,
                error: None,
                snippet,
                outcome: "delivered".into(),
                batch_id: None,
            })
            .collect();
        FastDone { l: self.l, key: self.k, audits, j: self.j }
    }
}

/// Past this size, the log is rewritten with only the lines not yet in the tables.
const ROTATE_BYTES: u64 = 1 << 20;

pub struct FastLog {
    path: PathBuf,
    file: Option<File>,
    next_l: u64,
    /// Lines appended but not yet in the tables, oldest first: a rotation keeps them.
    unapplied: VecDeque<(u64, Vec<u8>)>,
    bytes: u64,
    /// The last append failed (a full disk): said once, not per event.
    failing: bool,
    /// Appended, not yet taken by the writer, in order. The writer takes them whenever
    /// it wakes (at least once a [`crate::health::BEAT`]); it is woken for them only
    /// every [`RING_EVERY`]: a wake per event cost two thread switches per event.
    handed: Vec<FastDone>,
    /// The writer has stopped: nothing more reaches the tables in this run.
    writer_gone: bool,
}

/// Handed entries that wake the writer: often enough that its flush at 2048 waiting
/// events comes on time.
pub const RING_EVERY: usize = 256;

/// The fast log's file for the outbox at `db`.
pub fn path_for(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-fast", db.display()))
}

/// The entries in the log at `path` numbered above `after`, in order; a torn or
/// unreadable line ends the read (nothing after it was acked on its strength).
pub fn read(path: &Path, after: u64) -> Vec<FastDone> {
    let Ok(file) = File::open(path) else { return Vec::new() };
    let mut out = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let Ok(line) = line else { break };
        match serde_json::from_slice::<Line>(&line).map(Line::done) {
            Ok(done) if done.l > after => out.push(done),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

impl FastLog {
    /// Opens the log empty, numbering new entries after `last` (everything in it before
    /// is in the tables).
    pub fn open(path: PathBuf, last: u64) -> FastLog {
        let file = OpenOptions::new().create(true).append(true).open(&path).and_then(|f| {
            f.set_len(0)?;
            Ok(f)
        });
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "Cannot open the fast log; after a kill -9, events delivered in the last moments may be sent again.");
                None
            }
        };
        FastLog {
            path,
            file,
            next_l: last + 1,
            unapplied: VecDeque::new(),
            bytes: 0,
            failing: false,
            handed: Vec::new(),
            writer_gone: false,
        }
    }

    /// Appends an entry and hands it to the writer. Returns whether the writer should be
    /// woken for it (every [`RING_EVERY`] handed), or `None` once the writer has stopped.
    pub fn append_and_hand(&mut self, key: Option<i64>, audits: Vec<AuditRow>, j: Option<u64>) -> Option<bool> {
        if self.writer_gone {
            return None;
        }
        let done = self.append(key, audits, j);
        self.handed.push(done);
        Some(self.handed.len() % RING_EVERY == 0)
    }

    /// What was handed since the writer last took it, in order.
    pub fn take_handed(&mut self) -> Vec<FastDone> {
        std::mem::take(&mut self.handed)
    }

    /// The writer has stopped: later entries stay in the log for the next start.
    pub fn writer_stopped(&mut self) {
        self.writer_gone = true;
    }

    /// Appends one delivered event and returns it numbered.
    pub fn append(&mut self, key: Option<i64>, audits: Vec<AuditRow>, j: Option<u64>) -> FastDone {
        let done = FastDone { l: self.next_l, key, audits, j };
        self.next_l += 1;
        let mut line = serde_json::to_vec(&Line::of(&done)).unwrap_or_default();
        line.push(b'\n');
        self.write(&line);
        self.unapplied.push_back((done.l, line));
        done
    }

    fn write(&mut self, line: &[u8]) {
        let Some(file) = &mut self.file else { return };
        match file.write_all(line) {
            Ok(()) => {
                self.bytes += line.len() as u64;
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "Cannot append to the fast log; its events still reach the outbox's tables with the next commit.");
                }
                self.failing = true;
            }
        }
    }

    /// Entries up to `l` are in the tables. A log past its size is rewritten with what
    /// is not.
    pub fn applied(&mut self, l: u64) {
        while self.unapplied.front().is_some_and(|(n, _)| *n <= l) {
            self.unapplied.pop_front();
        }
        if self.bytes < ROTATE_BYTES {
            return;
        }
        let Some(file) = &mut self.file else { return };
        if file.set_len(0).is_err() {
            return;
        }
        self.bytes = 0;
        let keep: Vec<Vec<u8>> = self.unapplied.iter().map(|(_, line)| line.clone()).collect();
        for line in keep {
            self.write(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(delivery_id: &str) -> AuditRow {
        AuditRow {
            subscription: "s".into(),
            delivery_id: delivery_id.into(),
            outcome: "delivered".into(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_in_the_file_numbered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("outbox.db"));
        let mut log = FastLog::open(path.clone(), 41);
        assert_eq!(log.append(Some(7), vec![audit("d1")], None).l, 42);
        assert_eq!(log.append(None, vec![audit("d2")], Some(3)).l, 43);
        // Read as a restart after kill -9 would: without closing the log.
        let read_back = read(&path, 0);
        assert_eq!(read_back.iter().map(|d| d.l).collect::<Vec<_>>(), [42, 43]);
        assert_eq!(read_back[0].key, Some(7));
        assert_eq!(read_back[1].audits[0].delivery_id, "d2");
        assert_eq!((read_back[0].j, read_back[1].j), (None, Some(3)), "a held journal entry it retires");
        assert_eq!((read_back[1].audits[0].attempt, read_back[1].audits[0].outcome.as_str()), (1, "delivered"));
        assert_eq!(read(&path, 42).len(), 1, "entries already in the tables are skipped");
    }

    #[test]
    fn a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = FastLog::open(path.clone(), 0);
        log.append(Some(1), vec![audit("d1")], None);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"l\":2,\"k\":").unwrap();
        assert_eq!(read(&path, 0).len(), 1);
    }

    #[test]
    fn rotation_keeps_what_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = FastLog::open(path.clone(), 0);
        let big = "x".repeat(2048);
        let mut last = 0;
        for _ in 0..(ROTATE_BYTES / 2048 + 10) {
            let mut a = audit("d");
            a.snippet = Some(big.clone());
            last = log.append(None, vec![a], None).l;
        }
        log.applied(last - 3);
        let left = read(&path, 0);
        assert_eq!(left.iter().map(|d| d.l).collect::<Vec<_>>(), [last - 2, last - 1, last]);
        assert!(std::fs::metadata(&path).unwrap().len() < 16 * 1024);
    }
}

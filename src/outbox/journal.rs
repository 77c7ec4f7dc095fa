//! The held journal: events the fast path keeps in memory past their MQTT ack, made
//! durable in a plain file beside the outbox instead of in the tables
//! (docs/decisions.md, "The held journal").
//!
//! # Why a file of its own
//!
//! An event whose endpoint answers later than `storage.write_behind` (a far one, a slow
//! one, one in a roam) must be durable before its ack. Stored in the tables it costs a
//! commit's worth of B-tree pages (9 to 25 of them, rewritten whole), then as much again
//! for its result: tens of KB of flash an event at a robot's rates. Here it costs its
//! own bytes, appended: a group of events is one `write(2)` and one `fdatasync`.
//!
//! # Invariants
//!
//! 1. **Synced before ack.** [`Journal::append`] returns only after the group's record
//!    is on the disk (`fdatasync`); only then is the events' message acked. A torn record
//!    (power cut mid-write) fails its CRC: it was never acked, and reading stops there.
//! 2. **Retired, not deleted.** An entry ends when its event was delivered (the fast log
//!    has its line) or stored in the tables. Retirements are appended without a sync: one
//!    lost to a power cut makes the entry live again at start, and its deliveries are
//!    sent again with the same ids (at least once).
//! 3. **Two files, one generation.** Every record carries its generation. When the file
//!    in use has grown past [`ROTATE_AT`], the other file is rewritten from its start with
//!    the next generation, its first record carrying every live entry. Until that record
//!    is synced the older file is whole, so a cut mid-rotation loses nothing. Reading
//!    takes the file whose first record has the higher generation, up to the first record
//!    that is torn or older.
//! 4. **The files never shrink.** Records are written over older ones in place, so once
//!    both files have reached [`ROTATE_AT`] an append changes no file size and
//!    `fdatasync` writes no inode: the data page, only.
//!
//! # Record layout
//!
//! ```text
//!  [len: u32 LE][crc32 of body: u32 LE][body: len bytes of JSON]
//!  body = {"g": generation, "h": [{"j": id, "e": event}, …], "r": [retired ids…]}
//! ```
//!
//! At start every live entry becomes a stored event (with its deliveries, all pending),
//! unless its event is stored already, and a new generation begins empty.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NewEvent;
use crate::event::{NewDelivery, Priority};

/// The file in use is rotated once it has grown past this (and past twice its live
/// entries, so that a large backlog is not copied at every append).
const ROTATE_AT: u64 = 1024 * 1024;
const HEADER: usize = 8;
/// A record longer than this is not one of ours: reading stops.
const RECORD_MAX: usize = 256 * 1024 * 1024;

/// The two files of the journal of the outbox at `db`.
pub fn paths_for(db: &Path) -> [PathBuf; 2] {
    [PathBuf::from(format!("{}-held0", db.display())), PathBuf::from(format!("{}-held1", db.display()))]
}

/// One delivery of an entry: (delivery id, subscription, expires ms).
type Delivery = (String, String, i64);

/// An event as the journal keeps it: every field of [`NewEvent`], compact.
#[derive(Serialize, Deserialize)]
struct Held {
    id: String,
    t: String,
    d: String,
    c: i64,
    k: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<(i64, i64)>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    topic: String,
    data: String,
    p: u8,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    collapse: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<i64>,
    to: Vec<Delivery>,
}

impl Held {
    fn of(e: &NewEvent) -> Held {
        Held {
            id: e.id.clone(),
            t: e.event_type.clone(),
            d: e.device_id.clone(),
            c: e.created_ms,
            k: e.taken_ms,
            b: e.clock.map(|c| (c.boot_id, c.boottime_ms)),
            topic: e.topic.clone(),
            data: e.data.clone(),
            p: e.priority as u8,
            collapse: e.collapse,
            key: e.dedupe_key,
            to: e.deliveries.iter().map(|d| (d.id.clone(), d.subscription.clone(), d.expires_ms)).collect(),
        }
    }

    fn event(self) -> NewEvent {
        NewEvent {
            id: self.id,
            event_type: self.t,
            device_id: self.d,
            created_ms: self.c,
            taken_ms: self.k,
            clock: self.b.map(|(boot_id, boottime_ms)| crate::clock::Taken { boot_id, boottime_ms }),
            topic: self.topic,
            data: self.data,
            priority: match self.p {
                0 => Priority::High,
                2 => Priority::Low,
                _ => Priority::Normal,
            },
            collapse: self.collapse,
            dedupe_key: self.key,
            // Its key was claimed when the fast path took it; stored now, it is the same
            // event, not a redelivery to look up.
            dedupe_check: false,
            retained_key: None,
            deliveries: self
                .to
                .into_iter()
                .map(|(id, subscription, expires_ms)| NewDelivery { id, subscription, expires_ms })
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Entry {
    j: u64,
    e: Held,
}

#[derive(Deserialize)]
struct Body {
    g: u64,
    #[serde(default)]
    h: Vec<Entry>,
    #[serde(default)]
    r: Vec<u64>,
}

/// An entry of the journal still live at start: its event was acked but neither
/// delivered nor stored, as far as the journal knows.
pub struct Recovered {
    pub j: u64,
    pub event: NewEvent,
}

pub struct Journal {
    paths: [PathBuf; 2],
    /// The file in use, by index into `paths`; None before the first generation.
    file: Option<(usize, File)>,
    /// Which file held the newest generation at open: the first is written in the other.
    newest: usize,
    generation: u64,
    /// Where the next record goes in the file in use.
    end: u64,
    /// Each live entry's encoded JSON (`{"j":…,"e":…}`), copied forward at rotation, and
    /// the subscriptions its event goes to.
    live: HashMap<u64, (String, Vec<String>)>,
    live_bytes: u64,
    /// Retired since the last record: written with the next one.
    retired: Vec<u64>,
    /// Retired before their append came: a delivery's fast log line reaches the writer
    /// by its own way, and can overtake the command that journals its event. Their
    /// append is skipped.
    early: HashSet<u64>,
    /// `storage.synchronous = "full"`: each append is synced. With `normal` the tables'
    /// commits are not, and neither are these (a power cut may lose the last of both).
    sync: bool,
    /// [`ROTATE_AT`], smaller in tests.
    rotate_at: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("generation", &self.generation).field("live", &self.live.len()).finish()
    }
}

impl Journal {
    /// Reads the journal of the outbox at `db`: the entries still live, oldest first.
    /// Nothing is written until [`Journal::begin`], which the caller runs once it has
    /// stored them.
    pub fn open(db: &Path, sync: bool) -> (Journal, Vec<Recovered>) {
        let paths = paths_for(db);
        let [first, second] = [read(&paths[0]), read(&paths[1])];
        let generation_of = |r: &[Body]| r.first().map(|b| b.g);
        let (newest, bodies) = if generation_of(&second) > generation_of(&first) { (1, second) } else { (0, first) };
        let generation = generation_of(&bodies).unwrap_or(0);
        // With nothing on disk the first generation goes to the first file.
        let newest = if bodies.is_empty() { 1 } else { newest };
        let mut retired = HashSet::new();
        let mut entries: Vec<Entry> = Vec::new();
        for body in bodies {
            retired.extend(body.r);
            entries.extend(body.h);
        }
        let mut seen = HashSet::new();
        // A rotation copies live entries forward: each once, at its first place.
        entries.retain(|e| !retired.contains(&e.j) && seen.insert(e.j));
        let recovered = entries.into_iter().map(|e| Recovered { j: e.j, event: e.e.event() }).collect();
        let journal = Journal {
            paths,
            file: None,
            newest,
            generation,
            end: 0,
            live: HashMap::new(),
            live_bytes: 0,
            retired: Vec::new(),
            early: HashSet::new(),
            sync,
            rotate_at: ROTATE_AT,
        };
        (journal, recovered)
    }

    /// Starts a new, empty generation now: what was read at open is stored elsewhere. (Not
    /// needed when nothing was live: the first append starts one.)
    pub fn begin(&mut self) -> std::io::Result<()> {
        self.early.clear();
        self.live.clear();
        self.live_bytes = 0;
        self.retired.clear();
        self.rotate(Vec::new())
    }

    /// Appends events held past their ack, as one record, and syncs it. An entry is
    /// live from here until [`Journal::retire`]. On an error nothing of them is live.
    pub fn append(&mut self, events: &[(u64, &NewEvent)]) -> std::io::Result<()> {
        let encoded: Vec<(u64, String, Vec<String>)> = events
            .iter()
            .filter(|(j, _)| !self.early.remove(j))
            .map(|(j, e)| {
                let subscriptions = e.deliveries.iter().map(|d| d.subscription.clone()).collect();
                (*j, serde_json::to_string(&Entry { j: *j, e: Held::of(e) }).unwrap_or_default(), subscriptions)
            })
            .collect();
        if encoded.is_empty() {
            return Ok(());
        }
        let new_bytes: u64 = encoded.iter().map(|(_, s, _)| s.len() as u64).sum();
        let rotate =
            self.file.is_none() || (self.end >= self.rotate_at && self.end >= 2 * (self.live_bytes + new_bytes));
        let result = if rotate {
            self.rotate(encoded.iter().map(|(_, s, _)| s.as_str()).collect())
        } else {
            let body = self.body(encoded.iter().map(|(_, s, _)| s.as_str()), &self.retired);
            self.write_record(&body, self.sync)
        };
        result?;
        self.retired.clear();
        for (j, s, subscriptions) in encoded {
            self.live_bytes += s.len() as u64;
            self.live.insert(j, (s, subscriptions));
        }
        Ok(())
    }

    /// These entries ended (delivered, or stored in the tables). Written with the next
    /// record, or by [`Journal::write_retired`].
    pub fn retire(&mut self, ids: impl IntoIterator<Item = u64>) {
        for j in ids {
            match self.live.remove(&j) {
                Some((s, _)) => {
                    self.live_bytes -= s.len() as u64;
                    self.retired.push(j);
                }
                None => {
                    self.early.insert(j);
                }
            }
        }
    }

    /// Writes the retirements not yet written, without a sync (invariant 2): in the page
    /// cache they survive the agent's death, and the next sync carries them.
    pub fn write_retired(&mut self) {
        if self.retired.is_empty() || self.file.is_none() {
            return;
        }
        let body = self.body(std::iter::empty(), &self.retired);
        match self.write_record(&body, false) {
            Ok(()) => self.retired.clear(),
            Err(e) => {
                tracing::debug!(error = %e, "Could not write retirements to the held journal; kept for the next record.")
            }
        }
    }

    /// Deliveries of live entries, per subscription: acked, neither delivered nor stored.
    pub fn pending(&self) -> Vec<(String, u64)> {
        super::stats::per_subscription(
            self.live.values().flat_map(|(_, subscriptions)| subscriptions).map(String::as_str),
        )
    }

    fn body<'a>(&self, held: impl Iterator<Item = &'a str>, retired: &[u64]) -> String {
        let held: Vec<&str> = held.collect();
        format!(
            "{{\"g\":{},\"h\":[{}],\"r\":{}}}",
            self.generation,
            held.join(","),
            serde_json::to_string(retired).unwrap_or_else(|_| "[]".into())
        )
    }

    /// Starts the next generation in the other file, its first record carrying every
    /// live entry and `new` ones (invariant 3).
    fn rotate(&mut self, new: Vec<&str>) -> std::io::Result<()> {
        let next = 1 - self.file.as_ref().map_or(self.newest, |(i, _)| *i);
        let path = &self.paths[next];
        let created = !path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if created && let Some(dir) = path.parent() {
            // The new file's name must survive a power cut as well as its data.
            File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?.sync_all()?;
        }
        let generation = self.generation + 1;
        let live: Vec<&str> = self.live.values().map(|(s, _)| s.as_str()).chain(new).collect();
        let body = format!("{{\"g\":{generation},\"h\":[{}],\"r\":[]}}", live.join(","));
        write_at(&file, 0, &body)?;
        file.sync_data()?;
        self.generation = generation;
        self.end = (HEADER + body.len()) as u64;
        self.file = Some((next, file));
        Ok(())
    }

    fn write_record(&mut self, body: &str, sync: bool) -> std::io::Result<()> {
        let Some((_, file)) = &self.file else { return Err(std::io::Error::other("the held journal is not begun")) };
        write_at(file, self.end, body)?;
        if sync {
            file.sync_data()?;
        }
        self.end += (HEADER + body.len()) as u64;
        Ok(())
    }
}

fn write_at(file: &File, at: u64, body: &str) -> std::io::Result<()> {
    let mut record = Vec::with_capacity(HEADER + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(body.as_bytes()).to_le_bytes());
    record.extend_from_slice(body.as_bytes());
    file.write_all_at(&record, at)
}

/// The records of one file, from its start, up to the first torn one or one of another
/// generation than the first's.
fn read(path: &Path) -> Vec<Body> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let mut out: Vec<Body> = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len).filter(|_| len <= RECORD_MAX) else { break };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(body) = serde_json::from_slice::<Body>(body) else { break };
        if out.first().is_some_and(|first| first.g != body.g) {
            break;
        }
        out.push(body);
        at += HEADER + len;
    }
    out
}

#[cfg(test)]
mod tests;

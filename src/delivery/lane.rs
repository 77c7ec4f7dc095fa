//! One subscription's lane in the dispatcher: what it has in flight, what it is still
//! recording, and the due deliveries it fetched ahead.
//!
//! Fetches run beside the dispatcher loop, never inside it, so a fetch that waits behind a
//! commit does not hold up the completions and starts of every other request. That makes
//! a fetch's answer possibly older than the loop's view: a delivery may have finished and
//! had its result committed while the answer was on its way, and the answer still shows
//! it due. Each lane therefore remembers what it released during a fetch and skips it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;
use crate::config::Subscription;
use crate::event::now_ms;
use crate::outbox::{Due, DueBatch};

/// Due deliveries fetched ahead per parallel lane.
pub const PREFETCH: usize = 128;

pub struct Lane {
    pub sub: Arc<Subscription>,
    pub client: reqwest::Client,
    pub endpoint: Endpoint,
    pub in_flight: HashSet<i64>,
    /// Finished attempts whose results are not yet committed: the outbox still shows them
    /// as due, so a fetch must skip them.
    pub recording: HashSet<i64>,
    /// Due deliveries fetched ahead, oldest first; never also in flight.
    pub prefetched: VecDeque<Due>,
    /// A fetch is out; its answer arrives as a [`Fetched`].
    fetching: bool,
    /// Deliveries whose results committed while a fetch was out.
    released: HashSet<i64>,
    /// The last fetch got fewer rows than it asked for: nothing more is due until new
    /// work, a retry recorded, or `due_at`.
    exhausted: bool,
    /// New work or a recorded retry arrived while a fetch was out: its answer may predate
    /// it, so it cannot prove the queue empty.
    poked: bool,
    /// Look again at the next chance (new work, a slot freed, a fetch answered).
    pub dirty: bool,
    /// When the endpoint state or the rate limit next lets something start.
    pub wake_at: Option<Instant>,
    /// When the earliest delivery that is not due yet becomes due.
    pub due_at: Option<Instant>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// A fetch's answer, for lane `lane`, which asked for `asked` rows.
pub struct Fetched {
    pub lane: usize,
    pub asked: usize,
    pub batch: Result<DueBatch, crate::outbox::OutboxError>,
}

impl Lane {
    pub fn new(sub: Subscription, client: reqwest::Client, endpoint: Endpoint) -> Lane {
        Lane {
            sub: Arc::new(sub),
            client,
            endpoint,
            in_flight: HashSet::new(),
            recording: HashSet::new(),
            prefetched: VecDeque::new(),
            fetching: false,
            released: HashSet::new(),
            exhausted: false,
            poked: false,
            dirty: true,
            wake_at: None,
            due_at: None,
            last_status: None,
            last_error: None,
        }
    }

    /// The earliest time this lane wants to be looked at again.
    pub fn next_wake(&self) -> Option<Instant> {
        self.wake_at.into_iter().chain(self.due_at).min()
    }

    /// Whether a timer of this lane has fired; a fired due time is consumed.
    pub fn timer_fired(&mut self, now: Instant) -> bool {
        let due = self.due_at.is_some_and(|at| at <= now);
        if due {
            self.due_at = None;
            self.poke();
        }
        due || self.wake_at.is_some_and(|at| at <= now)
    }

    /// Something may have become due: look, and fetch even if the queue was found empty.
    pub fn poke(&mut self) {
        self.exhausted = false;
        self.poked |= self.fetching;
        self.dirty = true;
    }

    /// What to ask for, if a fetch should start now: how many rows, and the deliveries
    /// the outbox should leave out of them. `exact` lanes (FIFO, or an offline probe) take
    /// exactly what they may send; others read ahead, and start the next fetch before
    /// running dry.
    ///
    /// The outbox still shows what this lane has in flight, is recording or has fetched
    /// already as due. A parallel lane names those so the answer skips them instead of
    /// carrying them back (at full speed they were over a third of every answer).
    /// A FIFO lane cannot skip its head, so it asks for the known ones too (it has none
    /// when it fetches: a FIFO lane fetches only with nothing busy and nothing queued).
    pub fn fetch_request(&self, room: usize, exact: bool, fifo: bool) -> Option<(usize, Vec<i64>)> {
        let low = self.prefetched.is_empty() || (!exact && self.prefetched.len() < PREFETCH / 2);
        // An exact lane with no room left fetches when a slot frees, not ahead.
        if self.fetching || self.exhausted || !low || (exact && room == 0) {
            return None;
        }
        let ahead = if exact { room } else { room.max(PREFETCH) };
        let known = self.in_flight.iter().chain(&self.recording).copied().chain(self.prefetched.iter().map(|d| d.seq));
        if fifo {
            return Some((ahead + known.count(), Vec::new()));
        }
        let mut skip: Vec<i64> = known.collect();
        skip.sort_unstable();
        Some((ahead, skip))
    }

    pub fn fetch_started(&mut self) {
        self.fetching = true;
        self.poked = false;
        self.released.clear();
        self.due_at = None;
    }

    /// A delivery's attempt finished: its slot is free, and it is recording until its
    /// result is on disk.
    pub fn finished(&mut self, seq: i64) {
        self.in_flight.remove(&seq);
        self.recording.insert(seq);
        self.dirty = true;
    }

    /// A delivery's result is on disk; a retry may be due again (or have a new due time).
    pub fn release(&mut self, seq: i64, retry: bool) {
        self.recording.remove(&seq);
        if self.fetching {
            self.released.insert(seq);
        }
        if retry {
            self.poke();
        }
        self.dirty = true;
    }

    /// Takes a fetch's answer: keeps what is due and not already known here.
    pub fn fetched(&mut self, batch: DueBatch, asked: usize) {
        self.exhausted = batch.rows.len() < asked && !self.poked;
        let queued: HashSet<i64> = self.prefetched.iter().map(|d| d.seq).collect();
        let before = self.prefetched.len();
        for due in batch.rows {
            let seq = due.seq;
            let known = self.in_flight.contains(&seq)
                || self.recording.contains(&seq)
                || self.released.contains(&seq)
                || queued.contains(&seq);
            if !known {
                self.prefetched.push_back(due);
            }
        }
        self.answered();
        if self.prefetched.len() > before || !self.exhausted {
            self.dirty = true;
        }
        if let Some(ms) = batch.next_due_ms {
            self.due_at = Some(Instant::now() + Duration::from_millis((ms - now_ms()).max(0) as u64));
        }
    }

    /// A fetch failed: try again in a second rather than at once.
    pub fn fetch_failed(&mut self) {
        self.answered();
        self.exhausted = true;
        self.due_at = Some(Instant::now() + Duration::from_secs(1));
    }

    /// The fetch that was out has answered (or failed).
    fn answered(&mut self) {
        self.fetching = false;
        self.poked = false;
        self.released.clear();
    }
}

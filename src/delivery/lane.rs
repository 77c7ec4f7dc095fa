//! One subscription's lane in the dispatcher: what it has in flight, what it is still
//! recording, and the due deliveries it fetched ahead. A state machine with no I/O: the
//! dispatcher asks it what may start ([`Lane::next_starts`]) and tells it what happened.
//!
//! Fetches run beside the dispatcher loop, never inside it, so a fetch that waits behind a
//! commit does not hold up the completions and starts of every other request. That makes
//! a fetch's answer possibly older than the loop's view: a delivery may have finished and
//! had its result committed while the answer was on its way, and the answer still shows
//! it due. Each lane therefore remembers what it released during a fetch and skips it.
//! New work that arrives during a fetch is remembered too (`poked`): the answer may
//! predate it, so it cannot prove the queue empty.
//!
//! The lane also sends the fast path's deliveries (events not stored, see `fast`). It
//! takes them only when it is [`Lane::fast_ready`]: online, unthrottled, and with nothing
//! of its own stored queue in sight — no row fetched (on a FIFO lane, none in flight
//! either), no message handed to the outbox that a fetch has not yet seen committed, no
//! fast job being stored; on a FIFO lane, no head waiting for its retry either. Their
//! rows may appear in a fetch (a job stored after its deadline while its attempt is still
//! out): `fast_ids` makes the fetch skip them.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::LinkGate;
use super::endpoint::{Endpoint, State};
use super::fast::FastRef;
use super::outcome::Verdict;
use crate::config::{Ordering, Subscription};
use crate::event::now_ms;
use crate::live::EndpointView;
use crate::outbox::{Due, DueBatch};
use clock::ClockHold;

/// Due deliveries fetched ahead per parallel lane.
pub const PREFETCH: usize = 128;

pub struct Lane {
    sub: Arc<Subscription>,
    client: super::http::Client,
    endpoint: Endpoint,
    in_flight: HashSet<i64>,
    /// Finished attempts whose results are not yet committed: the outbox still shows them
    /// as due, so a fetch must skip them.
    recording: HashSet<i64>,
    /// Due deliveries fetched ahead, oldest first; never also in flight.
    prefetched: VecDeque<Due>,
    /// A fetch is out; its answer arrives through [`Lane::fetched`].
    fetching: bool,
    /// Deliveries whose results committed while a fetch was out…
    released: HashSet<i64>,
    /// …and fast-path deliveries settled while one was out (their rows, stored after a
    /// deadline, may still show pending in its answer).
    released_fast: HashSet<String>,
    /// The last fetch got fewer rows than it asked for: nothing more is due until new
    /// work, a retry recorded, or `due_at`.
    exhausted: bool,
    /// New work or a recorded retry arrived while a fetch was out.
    poked: bool,
    /// Look again at the next chance (new work, a slot freed, a fetch answered).
    dirty: bool,
    /// When the endpoint state or the rate limit next lets something start.
    wake_at: Option<Instant>,
    /// When the earliest delivery that is not due yet becomes due.
    due_at: Option<Instant>,
    last_status: Option<u16>,
    last_error: Option<String>,
    /// When an attempt last finished: with requests out and none finishing for a while,
    /// the endpoint has stalled (a roam), though nothing says it is offline yet.
    answered_at: Option<Instant>,
    /// Fast-path deliveries waiting for a slot, oldest first.
    fast_queue: VecDeque<FastRef>,
    fast_in_flight: usize,
    /// Delivery ids of fast attempts in flight or recording: rows a fetch skips.
    fast_ids: HashSet<String>,
    /// Those of them whose event is stored: a row of this lane's queue is out, and on a
    /// FIFO lane nothing new may go from memory until it is settled (it may be retried).
    fast_stored: HashSet<String>,
    /// The last ingest seq handed to the outbox with a delivery for this lane…
    forwarded: u64,
    /// …and the commit watermark under the last fetch that found the queue empty.
    seen: u64,
    /// Fast jobs of this lane being stored.
    persisting: usize,
    /// The wall clock holds this lane's timestamped signatures (see [`ClockHold`]).
    clock: ClockHold,
    /// Our clock against the endpoint's, by its last `Date` header.
    clock_skew: Option<String>,
    /// Batch requests in flight (batched subscriptions: `in_flight` counts their members).
    batches: usize,
    /// Since when the batch at the front of `prefetched` has waited to fill…
    batch_since: Option<Instant>,
    /// …and when it goes anyway (`batch.max_wait` later).
    batch_at: Option<Instant>,
    /// Its `max_rate` and `daily_budget` in the profile in force.
    budget: super::budget::LaneBudget,
    /// The link is metered (as this lane last saw it).
    metered: bool,
    /// The lowest priority that goes now (`Priority as i64`; 2: all).
    lowest: i64,
    /// It has sent its daily budget.
    over_budget: bool,
    /// A `Retry-After` held the subscription, or a delivery was put back for a retry:
    /// what was fetched ahead is read again before more starts, so that what kept its
    /// place in the queue (a held delivery, one the endpoint could not be reached for)
    /// goes before newer rows.
    reread_queue: bool,
}

/// What a lane may do now.
#[derive(Debug, Default)]
pub struct Starts {
    /// Deliveries to send now; the lane counts them in flight.
    pub due: Vec<Due>,
    /// They are offline probes.
    pub probe: bool,
    /// Fast-path deliveries to send now; the lane counts them in flight.
    pub fast: Vec<FastRef>,
    /// Batches to send now, a request each (batched subscriptions).
    pub batches: Vec<Vec<Due>>,
    /// A fetch to start.
    pub fetch: Option<FetchRequest>,
}

/// A fetch of due deliveries: how many rows, and which the outbox should leave out.
#[derive(Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub asked: usize,
    pub skip: Vec<i64>,
    pub fifo: bool,
    /// The lowest priority to read (`Priority as i64`; 2: all).
    pub lowest: i64,
}

impl Lane {
    pub fn new(sub: Subscription, client: super::http::Client, endpoint: Endpoint) -> Lane {
        let budget = super::budget::LaneBudget::new(&sub);
        Lane {
            sub: Arc::new(sub),
            client,
            endpoint,
            in_flight: HashSet::new(),
            recording: HashSet::new(),
            prefetched: VecDeque::new(),
            fetching: false,
            released: HashSet::new(),
            released_fast: HashSet::new(),
            exhausted: false,
            reread_queue: false,
            poked: false,
            dirty: true,
            wake_at: None,
            due_at: None,
            last_status: None,
            last_error: None,
            answered_at: None,
            fast_queue: VecDeque::new(),
            fast_in_flight: 0,
            fast_ids: HashSet::new(),
            fast_stored: HashSet::new(),
            forwarded: 0,
            seen: 0,
            persisting: 0,
            clock: ClockHold::default(),
            clock_skew: None,
            batches: 0,
            batch_since: None,
            batch_at: None,
            budget,
            metered: false,
            lowest: super::budget::ALL,
            over_budget: false,
        }
        .with_clock_policy()
    }

    pub fn name(&self) -> &str {
        &self.sub.name
    }

    pub fn sub(&self) -> &Arc<Subscription> {
        &self.sub
    }

    pub fn client(&self) -> &super::http::Client {
        &self.client
    }

    /// What is left of this lane's guaranteed `share` of the global slots: its share, or
    /// what its state lets it use if less, minus what it has in flight.
    pub fn unused_share(&self, share: usize) -> usize {
        let usable = match self.endpoint.state {
            State::Paused | State::Gone | State::Clock | State::Disabled => 0,
            State::Offline | State::Tls | State::Degraded => 1,
            State::Online if self.is_fifo() => 1,
            State::Online => self.sub.max_in_flight,
        };
        share.min(usable).saturating_sub(self.requests())
    }

    /// Requests in flight: a batch is one.
    fn requests(&self) -> usize {
        if self.sub.batch.is_some() { self.batches } else { self.in_flight.len() + self.fast_in_flight }
    }

    pub fn is_fifo(&self) -> bool {
        self.sub.ordering == Ordering::Fifo
    }

    /// Requests this subscription may have in flight: one for FIFO, else `max_in_flight`.
    pub(super) fn limit(&self) -> usize {
        if self.is_fifo() { 1 } else { self.sub.max_in_flight }
    }

    pub fn pause(&mut self) {
        self.endpoint.pause();
    }

    pub fn resume(&mut self) {
        self.endpoint.resume();
        self.poke();
    }

    pub fn mark_gone(&mut self) {
        self.endpoint.mark_gone();
    }

    /// The earliest time this lane wants to be looked at again.
    pub fn next_wake(&self) -> Option<Instant> {
        self.wake_at.into_iter().chain(self.due_at).chain(self.batch_at).min()
    }

    /// Whether a timer of this lane has fired; a fired due time is consumed.
    fn timer_fired(&mut self, now: Instant) -> bool {
        let due = self.due_at.is_some_and(|at| at <= now);
        if due {
            self.due_at = None;
            self.poke();
        }
        due || self.wake_at.is_some_and(|at| at <= now) || self.batch_at.is_some_and(|at| at <= now)
    }

    /// Something may have become due: look, and fetch even if the queue was found empty.
    pub fn poke(&mut self) {
        self.exhausted = false;
        self.poked |= self.fetching;
        self.dirty = true;
    }

    /// A slot freed somewhere: the global limit may let this lane start more.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// What may start now with `global_room` free global slots: the deliveries to send
    /// (now in flight) and the fetch that keeps the lane supplied. None when the lane has
    /// no reason to look (nothing changed and no timer fired).
    #[cfg(test)]
    pub fn next_starts(&mut self, now: Instant, global_room: usize) -> Option<Starts> {
        self.next_starts_with(now, global_room, &mut super::budget::LinkGate::default())
    }

    /// [`Lane::next_starts`] under the link's profile and rate.
    pub fn next_starts_with(&mut self, now: Instant, global_room: usize, link: &mut LinkGate) -> Option<Starts> {
        if !self.dirty && !self.timer_fired(now) {
            return None;
        }
        self.dirty = false;
        if self.clock.holds(now, &self.sub.name) {
            // Pending, budget untouched: look again in a second.
            self.wake_at = Some(now + Duration::from_secs(1));
            return Some(Starts::default());
        }
        if self.sub.batch.is_some() {
            return Some(self.next_batches(now, global_room, link));
        }
        let fifo = self.is_fifo();
        let limit = self.limit();
        // FIFO: the next event waits until the head's result is on disk, so that a head
        // to be retried is fetched again before anything behind it.
        let busy = self.in_flight.len()
            + self.fast_in_flight
            + if fifo { self.recording.len() + self.fast_recording() } else { 0 };
        let (room, wake) = self.endpoint.capacity(now, busy, limit);
        let (room, wake) = self.budget_room(now, room, wake, link);
        self.wake_at = wake;
        let mut room = room.min(global_room);
        if room == 0 {
            // Nothing may start: look again on a completion, new work or the wake time.
            return Some(Starts::default());
        }
        if !self.reread_if_asked() {
            return Some(Starts::default());
        }
        // What the fast path took was accepted while nothing stored was due: it goes first,
        // unless the endpoint has stopped answering (then it waits for its deadline and
        // is stored; probes are for stored deliveries).
        let online = self.endpoint.state == State::Online;
        let take_fast = if online { room.min(self.fast_queue.len()) } else { 0 };
        let fast: Vec<FastRef> = self.fast_queue.drain(..take_fast).collect();
        self.fast_in_flight += fast.len();
        self.endpoint.started(fast.len());
        room -= fast.len();
        if room == 0 {
            self.dirty = !self.fast_queue.is_empty();
            return Some(Starts { fast, ..Default::default() });
        }
        let probe = matches!(self.endpoint.state, State::Offline | State::Tls);
        // A FIFO lane or a probe sends exactly what it fetched for this start.
        let exact = fifo || probe;
        let mut due: Vec<Due> = Vec::with_capacity(room.min(self.prefetched.len()));
        while due.len() < room
            && let Some(d) = self.prefetched.pop_front()
        {
            // Each request pays as it starts: a rate lets one start while it has bytes.
            if !self.afford(now, std::slice::from_ref(&d), link) {
                self.prefetched.push_front(d);
                room = due.len();
                break;
            }
            due.push(d);
        }
        if exact {
            self.prefetched.clear();
        }
        self.endpoint.started(due.len());
        self.in_flight.extend(due.iter().map(|d| d.seq));
        let fetch = self.fetch_request(room - due.len(), exact, fifo);
        if fetch.is_some() {
            self.fetch_started();
        }
        Some(Starts { due, probe, fetch, fast, batches: Vec::new() })
    }

    /// What to ask for, if a fetch should start now. `exact` lanes (FIFO, or an offline
    /// probe) take exactly what they may send; others read ahead, and start the next
    /// fetch before running dry.
    ///
    /// The outbox still shows what this lane has in flight, is recording or has fetched
    /// already as due. A parallel lane names those so the answer skips them instead of
    /// carrying them back. A FIFO lane cannot skip its head, so it asks for the known
    /// ones too (it has none when it fetches: it fetches only with nothing busy).
    fn fetch_request(&self, room: usize, exact: bool, fifo: bool) -> Option<FetchRequest> {
        let low = self.prefetched.is_empty() || (!exact && self.prefetched.len() < PREFETCH / 2);
        // An exact lane with no room left fetches when a slot frees, not ahead.
        if self.fetching || self.exhausted || !low || (exact && room == 0) {
            return None;
        }
        let ahead = if exact { room } else { room.max(PREFETCH) };
        Some(self.fetch_ahead(ahead, fifo))
    }

    /// A fetch of `ahead` more due deliveries than the lane knows (see `fetch_request`).
    fn fetch_ahead(&self, ahead: usize, fifo: bool) -> FetchRequest {
        let known = self.in_flight.iter().chain(&self.recording).copied().chain(self.prefetched.iter().map(|d| d.seq));
        if fifo {
            return FetchRequest { asked: ahead + known.count(), skip: Vec::new(), fifo, lowest: self.lowest };
        }
        let mut skip: Vec<i64> = known.collect();
        skip.sort_unstable();
        FetchRequest { asked: ahead, skip, fifo, lowest: self.lowest }
    }

    /// A delivery handed out by [`Lane::next_starts`] could not start after all (no global
    /// slot): it is due again at the next fetch.
    pub fn not_started(&mut self, seq: i64) {
        self.in_flight.remove(&seq);
        self.poke();
    }

    fn fetch_started(&mut self) {
        self.fetching = true;
        self.poked = false;
        self.released.clear();
        self.released_fast.clear();
        self.due_at = None;
    }

    /// An attempt finished: its slot is free, it is recording until its result is on
    /// disk, and the endpoint learns from its verdict.
    pub fn finished(
        &mut self,
        seqs: &[i64],
        verdict: &Verdict,
        status: Option<u16>,
        probe: bool,
        took: Duration,
        now: Instant,
    ) {
        for seq in seqs {
            self.in_flight.remove(seq);
            self.recording.insert(*seq);
        }
        if self.sub.batch.is_some() {
            self.batches = self.batches.saturating_sub(1);
        }
        self.dirty = true;
        self.observe(verdict, status, probe, took, now);
    }

    pub(super) fn observe(
        &mut self,
        verdict: &Verdict,
        status: Option<u16>,
        probe: bool,
        took: Duration,
        now: Instant,
    ) {
        let before = self.endpoint.state;
        self.answered_at = Some(now);
        self.endpoint.observe(verdict, status, probe, took, self.limit(), now, fastrand::f64());
        if self.endpoint.held_until(now).is_some() {
            self.reread_queue = true;
        }
        self.say_state_change(before, verdict);
        self.last_status = status.or(self.last_status);
        self.last_error = match verdict {
            Verdict::Delivered => None,
            Verdict::Retry { reason, .. } | Verdict::Offline { reason, .. } | Verdict::Failed { reason, .. } => {
                Some(reason.clone())
            }
        };
    }

    /// A WARN when the endpoint goes offline or degraded, an INFO when it is back: once
    /// per change, not per attempt.
    fn say_state_change(&self, before: State, verdict: &Verdict) {
        let (name, url, after) = (&self.sub.name, crate::text::printable(self.sub.url.as_str()), self.endpoint.state);
        if before == after {
            return;
        }
        let reason = match verdict {
            Verdict::Delivered => "",
            Verdict::Retry { reason, .. } | Verdict::Offline { reason, .. } | Verdict::Failed { reason, .. } => reason,
        };
        match after {
            State::Offline => tracing::warn!(subscription = %name, %url, error = %reason,
                "The endpoint cannot be reached; probing it with backoff. Deliveries wait with their retry budget kept."),
            State::Degraded => tracing::warn!(subscription = %name, %url, error = %reason,
                "The endpoint keeps failing (5xx or timeouts); fewer requests go to it until it recovers."),
            State::Tls => tracing::error!(subscription = %name, %url, error = %reason,
                "The endpoint's certificate does not verify; an operator must fix the certificate or the subscription's ca_file. Probing it with backoff; deliveries wait with their retry budget kept."),
            State::Online if matches!(before, State::Offline | State::Tls | State::Degraded) => {
                tracing::info!(subscription = %name, %url, was = ?before, "The endpoint answers again; its backlog drains.")
            }
            _ => {}
        }
    }

    /// A delivery's result is on disk (or could not be written): it may be fetched
    /// again, and a retry may be due again (or have a new due time).
    pub fn release(&mut self, seq: i64, retry: bool) {
        self.recording.remove(&seq);
        if self.fetching {
            self.released.insert(seq);
        }
        if retry {
            self.poke();
            // It may be due again at once (a hold that kept its place, an unreachable
            // endpoint), ahead of what was fetched after it: read the queue again in its
            // order rather than serve newer rows first.
            self.reread_queue |= !self.is_fifo();
        }
        self.dirty = true;
    }

    /// What was fetched ahead while a delivery that keeps its place was out (a held one,
    /// one put back for a retry) is newer rows only: with `reread_queue` set, it is
    /// dropped and the queue read again, in its order. False while a fetch that is out
    /// must come back first: nothing may start until then.
    fn reread_if_asked(&mut self) -> bool {
        if !self.reread_queue {
            return true;
        }
        self.prefetched.clear();
        self.exhausted = false;
        if self.fetching {
            return false;
        }
        self.reread_queue = false;
        true
    }

    /// Takes a fetch's answer: keeps what is due and not already known here.
    pub fn fetched(&mut self, batch: DueBatch, asked: usize) {
        self.fetched_at(batch, asked, Instant::now(), crate::clock::sched_ms());
    }

    /// [`Lane::fetched`] at `now`, `now_ms` on the schedule clock (a model test's clock).
    pub fn fetched_at(&mut self, batch: DueBatch, asked: usize, now: Instant, now_ms: i64) {
        self.exhausted = batch.rows.len() < asked && !batch.more && !self.poked;
        let queued: HashSet<i64> = self.prefetched.iter().map(|d| d.seq).collect();
        let before = self.prefetched.len();
        if self.exhausted {
            self.seen = self.seen.max(batch.committed);
        }
        for due in batch.rows {
            let seq = due.seq;
            let known = self.in_flight.contains(&seq)
                || self.recording.contains(&seq)
                || self.released.contains(&seq)
                || queued.contains(&seq)
                || self.fast_ids.contains(&due.delivery_id)
                || self.released_fast.contains(&due.delivery_id);
            if !known {
                self.prefetched.push_back(due);
            }
        }
        self.answered();
        if self.prefetched.len() > before || !self.exhausted {
            self.dirty = true;
        }
        if let Some(ms) = batch.next_due_ms {
            // Rows are ours, but a row's time is still only a number: clamped to a day.
            let wait = ms.saturating_sub(now_ms).clamp(0, 86_400_000) as u64;
            self.due_at = Some(now + Duration::from_millis(wait));
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
        self.released_fast.clear();
    }

    /// What `status` and the heartbeat show of this lane.
    pub fn view(&self) -> EndpointView {
        EndpointView {
            name: self.sub.name.clone(),
            url: self.sub.url.clone(),
            state: if self.clock.holding && !self.clock.gave_up && self.endpoint.state == State::Online {
                State::Clock
            } else {
                self.endpoint.state
            },
            in_flight: self.in_flight.len() + self.fast_in_flight,
            last_status: self.last_status,
            last_error: self.last_error.clone(),
            clock_skew: self.clock_skew.clone(),
            daily_budget: self.budget.daily(),
            max_rate: self.budget.max_rate(),
            held: self.held_words(),
            sends_up_to: self.lowest,
            retry_after_hold: self.endpoint.held_until(Instant::now()).is_some(),
            next_attempt_at_ms: self
                .endpoint
                .next_probe()
                .map(|at| now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as i64),
        }
    }
}

mod batches;
mod budget;
mod clock;
mod fast;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

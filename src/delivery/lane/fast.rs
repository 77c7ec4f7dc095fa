//! A lane's side of the fast path (see the lane's module doc): when it may take events
//! from memory, and what it keeps of those it takes until they are settled.

use std::collections::HashSet;
use std::time::Instant;

use super::super::endpoint::State;
use super::super::fast::FastRef;
use super::super::outcome::Verdict;
use super::Lane;

/// Events waiting in memory for a slot that make a flood: a burst a bridge sends at once
/// (tens) stays in memory; beyond this, storing costs less than the fast log's line each.
const FLOOD_QUEUE: usize = 256;
/// The shortest silence with requests out that counts as a stall.
const STALL_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// An answer time that says the endpoint is not on the robot's LAN.
const FAR_ANSWER: std::time::Duration = std::time::Duration::from_millis(50);

impl Lane {
    /// Fast attempts finished whose results are not yet committed (their job was stored).
    pub(super) fn fast_recording(&self) -> usize {
        self.fast_ids.len().saturating_sub(self.fast_in_flight)
    }

    /// Whether a new event may go to this lane from memory (see the module doc).
    pub fn fast_ready(&self) -> bool {
        // Stored rows already out hold nothing back on a parallel lane (what is in flight
        // went before anything new anyway): a far endpoint fed a steady few events a
        // second always has one out, and would never come back to memory.
        let quiet = self.exhausted
            && !self.fetching
            && self.prefetched.is_empty()
            && (self.in_flight.is_empty() || !self.is_fifo())
            && self.persisting == 0
            && self.seen >= self.forwarded;
        let fifo_clear =
            !self.is_fifo() || (self.recording.is_empty() && self.due_at.is_none() && self.fast_stored.is_empty());
        self.endpoint.state == State::Online
            && self.sub.rate_limit.is_none()
            && self.sub.batch.is_none()
            && !self.budget.limits()
            && quiet
            && fifo_clear
            && !self.clock.holding
    }

    /// How long the endpoint's 2xx answers usually take, once it has given one.
    pub fn usual_answer(&self) -> Option<std::time::Duration> {
        self.endpoint.usual_answer()
    }

    /// Its endpoint usually answers in [`FAR_ANSWER`] or more: over WiFi or LTE, or a
    /// server that falls behind.
    pub fn far(&self) -> bool {
        self.usual_answer().is_some_and(|u| u >= FAR_ANSWER)
    }

    /// Requests are out and none has finished for twice the usual answer time (at least
    /// [`STALL_MIN`]): a roam or a stalled link. What joins its queue now waits as for an
    /// unreachable endpoint.
    pub fn stalled(&self, now: Instant) -> bool {
        let out = !self.in_flight.is_empty() || self.fast_in_flight > 0;
        let patience = self.usual_answer().map_or(STALL_MIN, |u| (u * 2).max(STALL_MIN));
        out && self.answered_at.is_some_and(|at| now.saturating_duration_since(at) > patience)
    }

    /// Stored deliveries of this lane are being worked (in flight, fetched ahead, or a
    /// fast job being stored): a new event joins a queue and waits its turn anyway, so
    /// its commit may wait for company (docs/decisions.md, "Unhurried ingest").
    pub fn behind(&self) -> bool {
        !self.in_flight.is_empty() || !self.prefetched.is_empty() || self.persisting > 0
    }

    /// Nothing sent to this lane now would be answered: offline, paused or gone.
    pub fn unreachable(&self) -> bool {
        matches!(self.endpoint.state, State::Offline | State::Tls | State::Paused | State::Gone | State::Disabled)
            || self.endpoint.held_until(Instant::now()).is_some()
    }

    /// A parallel lane whose slots are all taken and [`FLOOD_QUEUE`] more events wait in
    /// memory: a new event would wait for a slot anyway, and the durable path carries a
    /// flood at half the CPU (one commit for many, no fast log line each:
    /// docs/performance.md).
    pub fn fast_saturated(&self) -> bool {
        !self.is_fifo() && self.fast_queue.len() >= FLOOD_QUEUE.max(self.limit()) && self.fast_in_flight >= self.limit()
    }

    /// Fast-path deliveries wait in memory: queued for a slot, or in flight.
    pub fn has_fast_work(&self) -> bool {
        !self.fast_queue.is_empty() || self.fast_in_flight > 0
    }

    /// Fast-path deliveries wait in its queue for a slot.
    pub fn has_fast_queued(&self) -> bool {
        !self.fast_queue.is_empty()
    }

    /// Takes a fast-path delivery; it starts when a slot is free.
    pub fn queue_fast(&mut self, r: FastRef) {
        self.fast_queue.push_back(r);
        self.dirty = true;
    }

    /// Queued fast-path deliveries are stored instead of sent from memory.
    pub fn unqueue_fast(&mut self, refs: &HashSet<FastRef>) {
        self.fast_queue.retain(|q| !refs.contains(q));
    }

    /// A fast delivery handed out by [`Lane::next_starts`] could not start after all.
    pub fn fast_not_started(&mut self, r: FastRef) {
        self.fast_in_flight = self.fast_in_flight.saturating_sub(1);
        self.fast_queue.push_front(r);
        self.dirty = true;
    }

    /// A fast delivery whose job is gone (stored meanwhile) is not sent.
    pub fn fast_dropped(&mut self) {
        self.fast_in_flight = self.fast_in_flight.saturating_sub(1);
        self.dirty = true;
    }

    /// A fast attempt of `delivery_id` starts.
    pub fn fast_started(&mut self, delivery_id: &str) {
        self.fast_ids.insert(delivery_id.to_string());
    }

    /// A fast attempt finished: its slot is free, and the endpoint learns from it. Its
    /// id stays known until [`Lane::fast_settled`].
    pub fn fast_finished(&mut self, verdict: &Verdict, status: Option<u16>, took: std::time::Duration, now: Instant) {
        self.fast_in_flight = self.fast_in_flight.saturating_sub(1);
        self.dirty = true;
        self.observe(verdict, status, false, took, now);
    }

    /// A fast delivery is settled (delivered from memory, or its result committed): its
    /// row, if it has one, is the queue's again.
    pub fn fast_settled(&mut self, delivery_id: &str, retry: bool) {
        self.fast_ids.remove(delivery_id);
        self.fast_stored.remove(delivery_id);
        if self.fetching {
            self.released_fast.insert(delivery_id.to_string());
        }
        if retry {
            self.poke();
        }
        self.dirty = true;
    }

    /// The event of a fast attempt still in flight was stored.
    pub fn fast_stored(&mut self, delivery_id: &str) {
        self.fast_stored.insert(delivery_id.to_string());
    }

    /// A message with a delivery for this lane was handed to the outbox as ingest `seq`.
    pub fn forwarded(&mut self, seq: u64) {
        self.forwarded = self.forwarded.max(seq);
        self.poke();
    }

    /// A fast job of this lane is being stored (`true`), or its commit is done.
    pub fn persisting(&mut self, started: bool) {
        if started {
            self.persisting += 1;
        } else {
            self.persisting = self.persisting.saturating_sub(1);
            self.poke();
        }
    }
}

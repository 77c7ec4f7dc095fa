//! A batched subscription's lane: it starts whole batches, a request each, as
//! [`super::super::batch::take`] lets them go, and reads ahead enough to fill them.

use std::time::Instant;

use super::super::budget::LinkGate;
use super::super::endpoint::State;
use super::{Lane, PREFETCH, Starts};
use crate::outbox::Due;

impl Lane {
    /// [`Lane::next_starts`] for a batched subscription: whole batches, a request each,
    /// as [`super::super::batch::take`] lets them go. Its deliveries never take the fast path.
    pub(super) fn next_batches(&mut self, now: Instant, global_room: usize, link: &mut LinkGate) -> Starts {
        let metered_batch = self.sub.metered.as_ref().and_then(|m| m.batch.clone()).filter(|_| self.metered);
        let Some(cfg) = metered_batch.or_else(|| self.sub.batch.clone()) else { return Starts::default() };
        if !self.reread_if_asked() {
            return Starts::default();
        }
        let fifo = self.is_fifo();
        let limit = self.limit();
        let busy = self.batches + usize::from(fifo && !self.recording.is_empty());
        let (room, wake) = self.endpoint.capacity(now, busy, limit);
        let (room, wake) = self.budget_room(now, room, wake, link);
        self.wake_at = wake;
        let mut room = room.min(global_room);
        let probe = matches!(self.endpoint.state, State::Offline | State::Tls);
        let mut starts = Starts { probe, ..Default::default() };
        while room > 0 && self.may_start(now, link) {
            let more_coming = self.fetching || !self.exhausted;
            // A probe goes with what there is: it only asks whether the endpoint answers.
            let waited = probe || self.batch_since.is_some_and(|t| now.duration_since(t) >= cfg.max_wait);
            let Some(batch) = super::super::batch::take(&mut self.prefetched, &cfg, more_coming, waited) else { break };
            self.in_flight.extend(batch.iter().map(|d| d.seq));
            self.pay_estimate(&batch, link);
            self.batches += 1;
            room -= 1;
            starts.batches.push(batch);
            if fifo || probe {
                // The rest is fetched again, in order, once this batch's result is on disk:
                // what was dropped here is still due, so the queue is not known empty.
                self.prefetched.clear();
                self.exhausted = false;
            }
        }
        self.endpoint.started(starts.batches.len());
        match (self.prefetched.is_empty(), self.batch_since) {
            (true, _) => self.batch_since = None,
            (false, None) => self.batch_since = Some(now),
            (false, Some(_)) => {}
        }
        // Only a wait still to come is a timer: a batch that has waited but found no room
        // (offline, rate, slots) goes when that changes, which wakes the lane anyway; a
        // past time here would wake the loop again at once, and again.
        self.batch_at = self.batch_since.map(|t| t + cfg.max_wait).filter(|at| *at > now);
        // Read ahead enough for a few batches, so that a backlog drains with several in
        // flight; a FIFO lane reads its head only when nothing of it is out.
        let ahead =
            if fifo { cfg.max_events } else { PREFETCH.max(cfg.max_events * self.sub.max_in_flight.clamp(2, 4)) };
        let low = self.prefetched.len() < if fifo { cfg.max_events } else { ahead / 2 };
        let free = !fifo || busy + starts.batches.len() == 0;
        if low && free && !self.fetching && !self.exhausted {
            starts.fetch = Some(self.fetch_ahead(ahead, fifo));
            self.fetch_started();
        }
        starts
    }

    /// A batch handed out by [`Lane::next_starts`] could not start (no global slot).
    pub fn batch_not_started(&mut self, batch: &[Due]) {
        for d in batch {
            self.in_flight.remove(&d.seq);
        }
        self.batches = self.batches.saturating_sub(1);
        self.poke();
    }
}

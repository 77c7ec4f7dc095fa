//! The fast path's book: events taken from ingest to be delivered from memory, before
//! anything is written (docs/decisions.md, "The fast path"). No I/O: the dispatcher asks it
//! what to do and does it.
//!
//! # An event's life on the fast path
//!
//! ```text
//!  ingest ──Intake──> dispatcher: every delivery's lane ready? ──no──> outbox.ingest (durable, as ever)
//!                                      │ yes
//!                                      ▼
//!                       Job: one Slot per delivery, a deadline (now + storage.write_behind)
//!       every slot 2xx before the deadline ──> fast log, then ack (Resolution::Now)
//!       the deadline, its endpoint far      ──> journal: the event appended to the held
//!                                              journal and synced, then ack; the job stays
//!                                              in memory, still sent from there
//!       any other answer, or held too long  ──> persist: the event, its deliveries and the
//!                                              attempts so far in one commit, then ack;
//!                                              attempts still in flight are recorded
//!                                              later, by delivery id
//! ```
//!
//! Once persisted, a job is only waiting for its commit; its in-flight attempts belong to
//! the ordinary record path. A journaled job is acked, and otherwise lives on as before:
//! delivered, it retires its journal entry with its fast log line; answered otherwise, or
//! held past its second deadline, it is persisted like any other.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::outbox::{AttemptRecord, AuditRow, Due, NewEvent, NextState, Terminal};

pub use crate::handoff::{Intake, Resolution};

/// Names one delivery of one job.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FastRef {
    pub job: u64,
    pub index: usize,
}

#[derive(Debug)]
enum Slot {
    /// Waiting for a slot in its lane.
    Queued,
    InFlight,
    Delivered(AuditRow),
    /// Answered with something other than 2xx: recorded with the persist.
    Answered(AttemptRecord),
    /// In flight when the job was persisted: its result takes the ordinary record path.
    Handed,
}

struct Job {
    event: NewEvent,
    /// When it was taken: its age decides whether it can still make its deadline.
    opened: Instant,
    lanes: Vec<usize>,
    slots: Vec<Slot>,
    resolved: Option<oneshot::Sender<Resolution>>,
    persisted: bool,
    journal: Journal,
    /// Results of attempts handed over while the persist was not yet committed: they go
    /// to the outbox after it, so that their rows exist.
    late: Vec<AttemptRecord>,
}

/// Where a job is with the held journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Journal {
    No,
    /// Asked to be appended; its message is not acked yet.
    Asked,
    /// On disk, and its message acked.
    Kept,
}

/// What the dispatcher must do after telling the book something.
#[derive(Debug, Default)]
pub struct Next {
    /// Every delivery went: keep it in the fast log, then ack.
    pub delivered: Option<Delivered>,
    /// Store these jobs, in this order.
    pub persist: Vec<Persist>,
}

#[derive(Debug)]
pub struct Delivered {
    pub key: Option<i64>,
    pub audits: Vec<AuditRow>,
    /// None once acked (it was journaled).
    pub resolved: Option<oneshot::Sender<Resolution>>,
    /// Its entry in the held journal, which the fast log line retires.
    pub journaled: Option<u64>,
}

#[derive(Debug)]
pub struct Persist {
    pub job: u64,
    pub event: NewEvent,
    pub records: Vec<AttemptRecord>,
    /// Lanes whose queue held a delivery of this job: they no longer send it from memory.
    pub unqueued: Vec<(usize, FastRef)>,
    /// Deliveries still in flight, by lane and delivery id: now stored rows whose attempt
    /// is out.
    pub in_flight: Vec<(usize, String)>,
    /// Every lane the event goes to.
    pub lanes: Vec<usize>,
    /// Its entry in the held journal, retired by the commit.
    pub journaled: Option<u64>,
}

/// What ends with a stored job.
pub struct Persisted {
    pub key: Option<i64>,
    /// Whom to tell it may be acked; none if it was not stored, or was acked already.
    pub resolved: Option<oneshot::Sender<Resolution>>,
    /// Its message was acked on the strength of the held journal.
    pub acked: bool,
    pub lanes: Vec<usize>,
    /// Results that waited for the commit.
    pub late: Vec<AttemptRecord>,
}

#[derive(Default)]
pub struct Book {
    jobs: HashMap<u64, Job>,
    next: u64,
    /// Each job's deadline in opening order, which is deadline order (`write_behind` is
    /// one for all): what is overdue is at the front, without a scan of every job per
    /// turn of the dispatcher's loop. Entries of jobs since ended or stored are dropped
    /// as they reach the front.
    deadlines: VecDeque<(u64, Instant)>,
    /// The same for journaled jobs' second deadline: past it they are stored.
    held_deadlines: VecDeque<(u64, Instant)>,
    /// Jobs acked on the strength of the held journal (still in `jobs`).
    acked: usize,
}

impl Book {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Takes an event whose every delivery goes to lane `lanes[i]`; returns its job id.
    pub fn open(
        &mut self,
        event: NewEvent,
        lanes: Vec<usize>,
        deadline: Instant,
        resolved: oneshot::Sender<Resolution>,
    ) -> u64 {
        self.next += 1;
        self.deadlines.push_back((self.next, deadline));
        let slots = lanes.iter().map(|_| Slot::Queued).collect();
        self.jobs.insert(
            self.next,
            Job {
                event,
                opened: Instant::now(),
                lanes,
                slots,
                resolved: Some(resolved),
                persisted: false,
                journal: Journal::No,
                late: Vec::new(),
            },
        );
        self.next
    }

    /// What an attempt of delivery `r` sends: the event as a due delivery, first attempt.
    pub fn due(&self, r: &FastRef) -> Option<Due> {
        let job = self.jobs.get(&r.job)?;
        let d = job.event.deliveries.get(r.index)?;
        Some(Due {
            seq: 0,
            delivery_id: d.id.clone(),
            subscription: d.subscription.clone(),
            attempts: 0,
            budget_used: 0,
            event_id: job.event.id.clone(),
            event_type: job.event.event_type.clone(),
            device_id: job.event.device_id.clone(),
            created_ms: job.event.created_ms,
            data: job.event.data.clone(),
            clock: job.event.clock,
            priority: job.event.priority as i64,
            next_attempt_ms: 0,
        })
    }

    pub fn started(&mut self, r: &FastRef) {
        if let Some(slot) = self.jobs.get_mut(&r.job).and_then(|j| j.slots.get_mut(r.index)) {
            *slot = Slot::InFlight;
        }
    }

    /// Whether an attempt's result belongs to the book (true) or, its job persisted, to
    /// the ordinary record path (false).
    pub fn owns_result(&self, r: &FastRef) -> bool {
        self.jobs.get(&r.job).is_some_and(|j| !j.persisted)
    }

    /// The result of an attempt handed over at its job's persist: kept until that commits
    /// (None), or to be recorded now (the job is stored).
    pub fn stash(&mut self, r: &FastRef, record: AttemptRecord) -> Option<AttemptRecord> {
        match self.jobs.get_mut(&r.job) {
            Some(job) => {
                job.late.push(record);
                None
            }
            None => Some(record),
        }
    }

    /// An attempt of `r` finished with `record`.
    pub fn finished(&mut self, r: &FastRef, record: AttemptRecord) -> Next {
        let Some(job) = self.jobs.get_mut(&r.job) else { return Next::default() };
        if job.persisted {
            return Next::default();
        }
        let delivered = record.next == NextState::Terminal(Terminal::Delivered);
        job.slots[r.index] = if delivered { Slot::Delivered(record.audit) } else { Slot::Answered(record) };
        if !delivered {
            return Next { persist: self.persist(r.job).into_iter().collect(), ..Default::default() };
        }
        if !job.slots.iter().all(|s| matches!(s, Slot::Delivered(_))) {
            return Next::default();
        }
        let Some(mut job) = self.jobs.remove(&r.job) else { return Next::default() };
        if job.journal == Journal::Kept {
            self.acked -= 1;
        }
        let journaled = (job.journal != Journal::No).then_some(r.job);
        let audits = job
            .slots
            .drain(..)
            .filter_map(|s| match s {
                Slot::Delivered(a) => Some(a),
                _ => None,
            })
            .collect();
        Next {
            delivered: Some(Delivered { key: job.event.dedupe_key, audits, resolved: job.resolved.take(), journaled }),
            ..Default::default()
        }
    }

    /// Jobs whose deadline has passed, neither persisted nor journaled yet, oldest first.
    pub fn overdue(&mut self, now: Instant) -> Vec<u64> {
        let mut late = Vec::new();
        while let Some(&(id, deadline)) = self.deadlines.front()
            && deadline <= now
        {
            self.deadlines.pop_front();
            if self.jobs.get(&id).is_some_and(Job::unkept) {
                late.push(id);
            }
        }
        late
    }

    /// Journaled jobs past their second deadline, to be stored, oldest first.
    pub fn held_too_long(&mut self, now: Instant) -> Vec<Persist> {
        let mut late = Vec::new();
        while let Some(&(id, deadline)) = self.held_deadlines.front()
            && deadline <= now
        {
            self.held_deadlines.pop_front();
            if self.jobs.get(&id).is_some_and(|j| j.journal != Journal::No) {
                late.extend(self.persist(id));
            }
        }
        late
    }

    /// Jobs whose message is not acked yet: each holds a place in the broker's in-flight
    /// window. O(1).
    pub fn unacked(&self) -> usize {
        self.jobs.len() - self.acked
    }

    /// Jobs held in memory past their ack, or being appended to the journal: how many,
    /// and their payloads' bytes.
    pub fn journaled(&self) -> (usize, usize) {
        self.jobs
            .values()
            .filter(|j| j.journal != Journal::No && !j.persisted)
            .fold((0, 0), |(n, bytes), j| (n + 1, bytes + j.event.data.len()))
    }

    /// A job's payload bytes.
    pub fn bytes_of(&self, id: u64) -> usize {
        self.jobs.get(&id).map_or(0, |j| j.event.data.len())
    }

    /// Whether a job's event collapses: a newer one supersedes it while it waits, which
    /// only the tables do (the journal would send every one).
    pub fn collapses(&self, id: u64) -> bool {
        self.jobs.get(&id).is_some_and(|j| j.event.collapse)
    }

    /// Jobs neither persisted nor journaled: each holds an unacked MQTT message that
    /// nothing is making durable yet. A walk over every job.
    pub fn unkept(&self) -> usize {
        self.jobs.values().filter(|j| j.unkept()).count()
    }

    /// The lanes of a job.
    pub fn lanes_of(&self, id: u64) -> &[usize] {
        self.jobs.get(&id).map_or(&[], |j| &j.lanes)
    }

    /// Jobs neither persisted nor journaled for which `pick(lanes, age)` holds, oldest first.
    pub fn picked(&self, now: Instant, pick: impl Fn(&[usize], std::time::Duration) -> bool) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.unkept() && pick(&j.lanes, now.saturating_duration_since(j.opened)))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Marks these jobs as being journaled and returns their events to append, in order;
    /// each is held at most until `until`, then stored. Jobs already on their way are
    /// skipped.
    pub fn journal(&mut self, ids: &[u64], until: Instant) -> Vec<(u64, NewEvent)> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(job) = self.jobs.get_mut(&id).filter(|j| j.unkept()) else { continue };
            job.journal = Journal::Asked;
            self.held_deadlines.push_back((id, until));
            out.push((id, job.event.clone()));
        }
        out
    }

    /// The journal answered for a job: on disk (`ok`), its message may be acked (the
    /// sender is returned); not, it is to be stored instead (true).
    pub fn journaled_now(&mut self, id: u64, ok: bool) -> (Option<oneshot::Sender<Resolution>>, bool) {
        let Some(job) = self.jobs.get_mut(&id).filter(|j| !j.persisted && j.journal == Journal::Asked) else {
            // Delivered or persisted meanwhile: that path acks it.
            return (None, false);
        };
        if !ok {
            job.journal = Journal::No;
            return (None, true);
        }
        job.journal = Journal::Kept;
        self.acked += 1;
        (job.resolved.take(), false)
    }

    /// Persists these jobs (those not persisted yet), in order.
    pub fn persist_ids(&mut self, ids: &[u64]) -> Vec<Persist> {
        ids.iter().filter_map(|&id| self.persist(id)).collect()
    }

    /// Every job not yet persisted, oldest first (shutdown).
    pub fn all_unpersisted(&mut self) -> Vec<Persist> {
        self.persist_where(|_| true)
    }

    /// Persists the jobs not yet persisted that `pick` chooses, oldest first.
    fn persist_where(&mut self, pick: impl Fn(&Job) -> bool) -> Vec<Persist> {
        let mut ids: Vec<u64> = self.jobs.iter().filter(|(_, j)| !j.persisted && pick(j)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.persist(id)).collect()
    }

    /// Jobs not persisted yet with a delivery queued in `lane`, oldest first: a FIFO lane
    /// that stops sending from memory must store them in order.
    pub fn queued_in(&mut self, lane: usize) -> Vec<Persist> {
        self.persist_where(|j| j.lanes.iter().zip(&j.slots).any(|(l, s)| *l == lane && matches!(s, Slot::Queued)))
    }

    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut first = None;
        while let Some(&(id, deadline)) = self.deadlines.front() {
            if self.jobs.get(&id).is_some_and(Job::unkept) {
                first = Some(deadline);
                break;
            }
            self.deadlines.pop_front();
        }
        while let Some(&(id, deadline)) = self.held_deadlines.front() {
            if self.jobs.get(&id).is_some_and(|j| !j.persisted && j.journal != Journal::No) {
                return Some(first.map_or(deadline, |f: Instant| f.min(deadline)));
            }
            self.held_deadlines.pop_front();
        }
        first
    }

    /// Marks a job persisted and says what to store. Its in-flight attempts are handed to
    /// the record path; its queued ones leave their lanes' queues.
    fn persist(&mut self, id: u64) -> Option<Persist> {
        let job = self.jobs.get_mut(&id)?;
        if job.persisted {
            return None;
        }
        job.persisted = true;
        let mut records = Vec::new();
        let mut unqueued = Vec::new();
        let mut in_flight = Vec::new();
        for (index, slot) in job.slots.iter_mut().enumerate() {
            match std::mem::replace(slot, Slot::Handed) {
                Slot::Delivered(audit) => {
                    records.push(AttemptRecord::new(None, audit, NextState::Terminal(Terminal::Delivered)))
                }
                Slot::Answered(record) => records.push(record),
                Slot::Queued => unqueued.push((job.lanes[index], FastRef { job: id, index })),
                Slot::InFlight => in_flight.push((job.lanes[index], job.event.deliveries[index].id.clone())),
                Slot::Handed => {}
            }
        }
        let journaled = (job.journal != Journal::No).then_some(id);
        Some(Persist {
            job: id,
            event: job.event.clone(),
            records,
            unqueued,
            in_flight,
            lanes: job.lanes.clone(),
            journaled,
        })
    }

    /// A persist committed (`ok`) or could not be: the job ends, and its message may be
    /// acked (or, not stored, must not be).
    pub fn persisted(&mut self, id: u64, ok: bool) -> Option<Persisted> {
        let mut job = self.jobs.remove(&id)?;
        let acked = job.journal == Journal::Kept;
        if acked {
            self.acked -= 1;
        }
        let resolved = job.resolved.take().filter(|_| ok);
        Some(Persisted { key: job.event.dedupe_key, resolved, acked, lanes: job.lanes, late: job.late })
    }
}

impl Job {
    /// Neither persisted nor journaled (nor on its way to either).
    fn unkept(&self) -> bool {
        !self.persisted && self.journal == Journal::No
    }
}

#[cfg(test)]
mod tests;

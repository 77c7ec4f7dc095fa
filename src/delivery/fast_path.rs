//! The dispatcher's side of the fast path (see [`super::fast`]): taking ingest's messages,
//! finishing fast attempts, storing jobs that could not be delivered from memory in time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::attempt::Done;
use super::fast::{FastRef, Intake, Next, Persist, Resolution};
use super::lane::Lane;
use super::{Dispatcher, Recorded};
use crate::outbox::{AttemptRecord, Inbound};

/// Held jobs this far below the broker's in-flight window are journaled: room for the
/// messages that go to the outbox directly meanwhile.
const BROKER_WINDOW_MARGIN: usize = 2;
/// What a commit takes, about: a job whose answer is due sooner is not worth storing.
const COMMIT_TIME: Duration = Duration::from_millis(20);
/// How long an event that joins a queue being worked may wait for a commit to share when
/// its endpoint's usual answer time is not known yet.
const QUEUE_LINGER: Duration = Duration::from_millis(100);
/// A journaled job is stored in the tables after this long in memory…
const HELD_FOR: Duration = Duration::from_secs(60);
/// …and once this many are held, or their payloads come to [`HELD_MAX_BYTES`], the next
/// ones are stored instead: memory, and the journal's files, stay small.
const HELD_MAX: usize = 4096;
const HELD_MAX_BYTES: usize = 4 * 1024 * 1024;

/// A job made durable, or not: what the dispatcher hears back from the outbox.
pub enum Kept {
    /// Stored in the tables (`ok`), or not.
    Stored(u64, bool),
    /// Appended to the held journal and synced (`ok`), or not.
    Journaled(Vec<u64>, bool),
}

/// The next message from ingest; never ready when the fast path is off.
pub async fn next_intake(intake: &mut Option<mpsc::UnboundedReceiver<Intake>>) -> Option<Intake> {
    match intake {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    /// One message from ingest: sent from memory if every delivery's lane is ready (and
    /// it is not a redelivery), else handed to the outbox as ever.
    pub(super) fn take(&mut self, taken: Intake, keeping: &mut JoinSet<Kept>) {
        let Inbound::Event(event) = &taken.inbound else { return self.forward(taken) };
        if event.retained_key.is_some() {
            // Checked against the last retained payload of its topic, which is stored.
            return self.forward(taken);
        }
        let lanes: Option<Vec<usize>> = event
            .deliveries
            .iter()
            .map(|d| {
                self.by_name
                    .get(&d.subscription)
                    .copied()
                    // A lane a Retry-After holds queues what comes behind what it holds.
                    .filter(|i| self.lanes[*i].fast_ready() && !self.lanes[*i].unreachable() && !self.link.limits())
            })
            .collect();
        let lanes = match lanes {
            Some(lanes) if !lanes.is_empty() => lanes,
            _ => return self.forward(taken),
        };
        // A flood: stored behind the saturated lane's memory queue. Not while a FIFO lane
        // of the event works from memory: its stored copy would go before those.
        if lanes.iter().any(|&l| self.lanes[l].fast_saturated())
            && !lanes.iter().any(|&l| self.lanes[l].is_fifo() && self.lanes[l].has_fast_work())
        {
            return self.forward(taken);
        }
        let Intake { inbound: Inbound::Event(event), resolved, .. } = taken else { return };
        if let Some(key) = event.dedupe_key
            && !self.outbox.keys().claim(key, event.dedupe_check)
        {
            // A redelivery of what was delivered or is being sent: nothing to do but ack.
            let _ = resolved.send(Resolution::Now);
            return;
        }
        if self.still_lingering() > 0 {
            // Its ack would wait for their commit: nobody may linger on them now.
            self.hurry_lingering();
        }
        let deadline = Instant::now() + self.write_behind;
        let job = self.fast.open(event, lanes.clone(), deadline, resolved);
        for (index, lane) in lanes.into_iter().enumerate() {
            self.lanes[lane].queue_fast(FastRef { job, index });
        }
        self.keep_the_broker_flowing(keeping);
    }

    /// The broker sends at most `mqtt.broker_max_inflight` messages before it waits for
    /// acks, and acks go in receive order. Once unacked jobs come near that, those that
    /// will not be answered within a commit's time are journaled together (one synced
    /// append) and so acked: the flow from the broker never waits on a far endpoint's
    /// answers.
    fn keep_the_broker_flowing(&mut self, keeping: &mut JoinSet<Kept>) {
        let high = self.window_high();
        self.hurry_near_the_window();
        // Asked per message: the count of unacked jobs, and whether any endpoint answers
        // slower than a commit, answer most of the time without a walk.
        if self.fast.unacked() < high {
            return;
        }
        let usual: Vec<Option<Duration>> = self.lanes.iter().map(Lane::usual_answer).collect();
        if !usual.iter().any(|u| u.is_some_and(|u| u > COMMIT_TIME)) || self.fast.unkept() < high {
            return;
        }
        let picked = self.fast.picked(Instant::now(), |lanes, age| {
            lanes.iter().any(|&l| usual[l].is_some_and(|u| age + COMMIT_TIME < u))
        });
        self.keep(picked, keeping);
    }

    /// Makes jobs durable so that their messages can be acked while they stay in memory:
    /// in the held journal (one synced append for all of them), or, past [`HELD_MAX`]
    /// held, in the tables. A collapsing route's events go to the tables, where a newer
    /// one supersedes what still waits.
    fn keep(&mut self, ids: Vec<u64>, keeping: &mut JoinSet<Kept>) {
        if ids.is_empty() {
            return;
        }
        let (collapsing, ids): (Vec<u64>, Vec<u64>) = ids.into_iter().partition(|&id| self.fast.collapses(id));
        let stored = self.fast.persist_ids(&collapsing);
        self.persist(stored, keeping);
        let (mut held, mut bytes) = self.fast.journaled();
        let mut room = 0;
        for &id in &ids {
            bytes += self.fast.bytes_of(id);
            held += 1;
            if held > HELD_MAX || bytes > HELD_MAX_BYTES {
                break;
            }
            room += 1;
        }
        let events = self.fast.journal(&ids[..room], Instant::now() + HELD_FOR);
        if !events.is_empty() {
            let journaled: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
            let reply = self.outbox.journal(events);
            keeping.spawn(async move { Kept::Journaled(journaled, reply.await.unwrap_or(false)) });
        }
        let stored = self.fast.persist_ids(&ids[room..]);
        self.persist(stored, keeping);
    }

    /// Hands a message to the outbox (durable path): acked once committed.
    pub(super) fn forward(&mut self, taken: Intake) {
        let Intake { seq, inbound, resolved } = taken;
        // Nobody waits on the latency of an event none of whose endpoints answers now,
        // and an event that joins a queue being worked waits its turn anyway: about an
        // answer's time (docs/decisions.md, "Unhurried ingest").
        let mut linger = None;
        let now = Instant::now();
        if let Inbound::Event(e) = &inbound {
            for d in &e.deliveries {
                let Some(&lane) = self.by_name.get(&d.subscription) else { continue };
                self.lanes[lane].forwarded(seq);
                let lane = &self.lanes[lane];
                let may_wait = if lane.unreachable() || lane.stalled(now) {
                    Duration::MAX
                } else if lane.behind() {
                    lane.usual_answer().unwrap_or(QUEUE_LINGER)
                } else {
                    Duration::ZERO
                };
                linger = Some(linger.unwrap_or(Duration::MAX).min(may_wait));
            }
        }
        let handed = match linger.filter(|l| !l.is_zero()) {
            Some(linger) => {
                self.lingering.push_back((seq, linger < Duration::MAX));
                let handed = self.outbox.ingest_unhurried(seq, inbound, linger);
                self.hurry_near_the_window();
                handed
            }
            None => self.outbox.ingest(seq, inbound),
        };
        if handed.is_ok() {
            let _ = resolved.send(Resolution::AfterCommit);
        }
    }

    /// Held jobs and lingering messages this many hold the broker's window nearly full.
    fn window_high(&self) -> usize {
        self.broker_window.saturating_sub(BROKER_WINDOW_MARGIN).max(1)
    }

    /// Messages forwarded into a worked queue wait for company, but not once they and the
    /// held jobs fill the broker's window: it sends nothing more until some are acked.
    /// Those of an unreachable endpoint are left to the writer, which sees the broker stop
    /// sending: a window larger than `broker_max_inflight` then still fills its commits.
    fn hurry_near_the_window(&mut self) {
        if self.still_lingering() == 0 {
            return;
        }
        let short = self.lingering.iter().filter(|(_, short)| *short).count();
        if short > 0 && self.fast.unacked() + short >= self.window_high() {
            self.hurry_lingering();
        }
    }

    /// The writer commits what lingers now; nothing is lingering after that.
    fn hurry_lingering(&mut self) {
        self.outbox.hurry();
        self.lingering.clear();
    }

    /// Messages forwarded unhurried not yet committed, as far as the watermark says.
    fn still_lingering(&mut self) -> usize {
        let committed = *self.outbox.committed().borrow();
        while self.lingering.front().is_some_and(|&(s, _)| s <= committed) {
            self.lingering.pop_front();
        }
        self.lingering.len()
    }

    /// A fast attempt finished. Returns the record to commit with the wave when its job
    /// was stored meanwhile; otherwise the book takes the result.
    pub(super) fn finish_fast(&mut self, done: Done, keeping: &mut JoinSet<Kept>) -> Option<AttemptRecord> {
        let took = done.took();
        let r = done.fast?;
        if let Some(lane) = self.lanes.get_mut(done.lane) {
            lane.fast_finished(&done.verdict, done.status, took, Instant::now());
            // Nothing was paid at start: the fast path runs only where nothing limits it.
            lane.paid(done.sent_bytes, 0, &mut self.link);
        }
        self.after_attempt(done.lane, &done.verdict, done.skew);
        if !self.fast.owns_result(&r) {
            return self.fast.stash(&r, done.record);
        }
        let Next { delivered, persist } = self.fast.finished(&r, done.record);
        if let Some(d) = delivered {
            for audit in &d.audits {
                if let Some(&lane) = self.by_name.get(&audit.subscription) {
                    self.lanes[lane].fast_settled(&audit.delivery_id, false);
                }
            }
            // In the fast log (the page cache) before the ack: a kill -9 from here on
            // cannot make the broker's redelivery look new.
            let kept = self.outbox.delivered_fast(d.key, d.audits, d.journaled);
            if let Some(key) = d.key {
                self.outbox.keys().settle(key);
            }
            if kept.is_ok()
                && let Some(resolved) = d.resolved
            {
                let _ = resolved.send(Resolution::Now);
            }
        }
        self.persist(persist, keeping);
        None
    }

    /// Journals every job whose deadline has passed, and with them, in the same append,
    /// every job that will miss its own: one that shares an endpoint with a job that just
    /// missed (that endpoint is not answering in time now: a stall, a roam), or whose
    /// endpoint usually answers later than that. Stores journaled jobs held too long.
    pub(super) fn overdue(&mut self, keeping: &mut JoinSet<Kept>) {
        let now = Instant::now();
        let mut late = self.fast.overdue(now);
        if !late.is_empty() {
            let mut missed = vec![false; self.lanes.len()];
            late.iter().flat_map(|&id| self.fast.lanes_of(id)).for_each(|&l| missed[l] = true);
            let usual: Vec<Option<Duration>> = self.lanes.iter().map(Lane::usual_answer).collect();
            let write_behind = self.write_behind;
            let will_miss = self.fast.picked(now, |lanes, age| {
                lanes.iter().any(|&l| missed[l] || usual[l].is_some_and(|u| age + u > write_behind))
            });
            late.extend(will_miss);
            // Job ids go in opening order: oldest first, each once.
            late.sort_unstable();
            late.dedup();
        }
        self.keep(late, keeping);
        let held = self.fast.held_too_long(now);
        self.persist(held, keeping);
    }

    /// Stores jobs: each its event, deliveries and the attempts so far, in one commit.
    /// A FIFO lane they go to stores the jobs queued behind them too, and all of them go
    /// to the outbox in arrival (job) order, so that its queue on disk keeps event order.
    pub(super) fn persist(&mut self, jobs: Vec<Persist>, keeping: &mut JoinSet<Kept>) {
        let mut all = jobs;
        let mut i = 0;
        while i < all.len() {
            let fifo: Vec<usize> = all[i].lanes.iter().copied().filter(|&l| self.lanes[l].is_fifo()).collect();
            for lane in fifo {
                let behind = self.fast.queued_in(lane);
                all.extend(behind);
            }
            i += 1;
        }
        all.sort_by_key(|p| p.job);
        // One pass over each lane's queue for all of them: a burst stores thousands.
        let mut unqueued: HashMap<usize, HashSet<FastRef>> = HashMap::new();
        for p in &mut all {
            for (lane, r) in p.unqueued.drain(..) {
                unqueued.entry(lane).or_default().insert(r);
            }
        }
        for (lane, refs) in unqueued {
            self.lanes[lane].unqueue_fast(&refs);
        }
        for p in all {
            for (lane, id) in &p.in_flight {
                self.lanes[*lane].fast_stored(id);
            }
            for record in &p.records {
                if let Some(&lane) = self.by_name.get(&record.audit.subscription) {
                    self.lanes[lane].fast_settled(&record.audit.delivery_id, false);
                }
            }
            for &lane in &p.lanes {
                self.lanes[lane].persisting(true);
            }
            let reply = self.outbox.persist(p.event, p.records, p.journaled);
            let job = p.job;
            keeping.spawn(async move { Kept::Stored(job, reply.await.is_ok()) });
        }
    }

    /// The outbox answered for jobs it was asked to make durable.
    pub(super) fn kept(&mut self, kept: Kept, recordings: &mut JoinSet<Recorded>, keeping: &mut JoinSet<Kept>) {
        match kept {
            Kept::Stored(job, ok) => self.persisted(job, ok, recordings),
            Kept::Journaled(jobs, ok) => {
                let mut store = Vec::new();
                for job in jobs {
                    match self.fast.journaled_now(job, ok) {
                        (Some(resolved), _) => drop(resolved.send(Resolution::Now)),
                        (None, true) => store.push(job),
                        (None, false) => {}
                    }
                }
                let stored = self.fast.persist_ids(&store);
                self.persist(stored, keeping);
            }
        }
    }

    /// A job's commit is done (`ok`) or could not be: ack its message, or leave it to the
    /// broker to send again.
    fn persisted(&mut self, job: u64, ok: bool, recordings: &mut JoinSet<Recorded>) {
        let Some(done) = self.fast.persisted(job, ok) else { return };
        for &lane in &done.lanes {
            self.lanes[lane].persisting(false);
        }
        if let Some(key) = done.key {
            self.outbox.keys().release(key);
        }
        let late: Vec<(usize, AttemptRecord)> = done
            .late
            .into_iter()
            .filter_map(|r| self.by_name.get(&r.audit.subscription).map(|&lane| (lane, r)))
            .collect();
        if ok {
            self.record_wave(Vec::new(), late, recordings, false);
        } else {
            for (lane, r) in late {
                self.lanes[lane].fast_settled(&r.audit.delivery_id, false);
            }
        }
        match done.resolved {
            Some(resolved) => drop(resolved.send(Resolution::Now)),
            None if done.acked && !ok => tracing::warn!(
                "An event held past its ack could not be stored; the held journal keeps it, and it is delivered after a restart."
            ),
            None if done.acked => {}
            None => tracing::warn!(
                "An event could not be stored after its delivery from memory failed; its MQTT message is not acked, and the broker sends it again."
            ),
        }
    }
}

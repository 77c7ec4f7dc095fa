//! The dispatcher: takes due deliveries from the outbox and sends them, within the global
//! and per-subscription limits, the rate limits and each endpoint's state. Each attempt is
//! prepare → send → classify → record. A finished attempt frees its slot at once, so the
//! next request starts while its result commits; until that commit the delivery is
//! *recording*: never fetched again, and on a FIFO lane it still holds the lane's one slot.

mod attempt;
mod batch;
pub mod budget;
pub mod compress;
pub mod endpoint;
mod explain;
pub mod fast;
mod fast_path;
pub mod http;
mod lane;
pub mod outcome;
pub mod schedule;
mod share;
mod token;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Beat;
use crate::live::{Control, DispatcherHandle, EndpointViews};
use crate::outbox::{AttemptRecord, HoldState, NextState, Outbox, OutboxError};
use attempt::{Attempt, Done};
use endpoint::Endpoint;
use fast::{Book, Intake};
use lane::{FetchRequest, Lane};
use outcome::Verdict;

pub use attempt::next_state;

/// A fetch's answer, for lane `lane`, which asked for `asked` rows.
struct Fetched {
    lane: usize,
    asked: usize,
    batch: Result<crate::outbox::DueBatch, OutboxError>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription {name}: {source}")]
    Client { name: String, source: http::ClientError },
}

pub struct Dispatcher {
    lanes: Vec<Lane>,
    outbox: Outbox,
    global: Arc<Semaphore>,
    grace: Duration,
    views: EndpointViews,
    handle: DispatcherHandle,
    control: mpsc::UnboundedReceiver<Control>,
    beat: Beat,
    /// Lane index by subscription name.
    by_name: HashMap<String, usize>,
    /// Messages from ingest when the fast path is on (`storage.write_behind` > 0).
    intake: Option<mpsc::UnboundedReceiver<Intake>>,
    write_behind: Duration,
    /// `mqtt.broker_max_inflight`: how many messages the fast path may hold unacked.
    broker_window: usize,
    fast: Book,
    /// Messages forwarded unhurried and not yet seen committed: each holds its ack, and
    /// the acks of all behind it (acks go in receive order). With each, whether it joined
    /// a queue being worked (a short linger) rather than an unreachable endpoint's.
    lingering: std::collections::VecDeque<(u64, bool)>,
    /// Global slots guaranteed to each lane (see `share`).
    share: usize,
    metrics: crate::live::AttemptMetrics,
    /// The link's profile and rate; what each subscription sent.
    link: budget::LinkGate,
}

impl Dispatcher {
    pub fn new(config: &Config, outbox: Outbox, beat: Beat) -> Result<Self, DeliveryError> {
        let mut lanes = Vec::new();
        for sub in &config.subscriptions {
            let client =
                http::client(sub).map_err(|source| DeliveryError::Client { name: sub.name.clone(), source })?;
            let endpoint = Endpoint::new(config.delivery.offline_probe_max, sub.rate_limit, sub.enabled);
            lanes.push(Lane::new(sub.clone(), client, endpoint));
        }
        let (handle, control) = crate::live::control_channel();
        let by_name = lanes.iter().enumerate().map(|(i, l): (usize, &Lane)| (l.name().to_string(), i)).collect();
        Ok(Dispatcher {
            lanes,
            outbox,
            global: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            grace: config.delivery.shutdown_grace,
            views: Arc::new(Mutex::new(Vec::new())),
            handle,
            control,
            beat,
            by_name,
            intake: None,
            write_behind: config.storage.write_behind,
            broker_window: usize::try_from(config.mqtt.broker_max_inflight).unwrap_or(usize::MAX),
            fast: Book::default(),
            lingering: std::collections::VecDeque::new(),
            share: share::per_lane(config.delivery.max_in_flight, config.subscriptions.len()),
            metrics: crate::live::AttemptMetrics::default(),
            link: budget::LinkGate::new(config.link.clone(), crate::link::Link::default()),
        })
    }

    /// Takes ingest's messages from `intake` (the fast path): each is sent from memory
    /// when its lanes are ready, else handed to the outbox in receive order.
    /// Counts attempts into `metrics` (the agent's, kept across reloads).
    pub fn with_metrics(mut self, metrics: crate::live::AttemptMetrics) -> Self {
        for lane in &self.lanes {
            metrics.declare(lane.name());
        }
        self.metrics = metrics;
        self
    }

    /// Follows `link` (shared with the status socket, kept across reloads): its profile,
    /// and what each subscription has sent against its daily budget.
    pub fn with_link(mut self, config: &Config, link: crate::link::Link) -> Self {
        self.link = budget::LinkGate::new(config.link.clone(), link);
        self
    }

    pub fn with_intake(mut self, intake: mpsc::UnboundedReceiver<Intake>) -> Self {
        self.intake = Some(intake);
        self
    }

    pub fn handle(&self) -> DispatcherHandle {
        self.handle.clone()
    }

    fn lane(&mut self, name: &str) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.name() == name)
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Pause(name, reply) => {
                let found = self.lane(&name).map(Lane::pause).is_some();
                let _ = reply.send(found);
            }
            Control::Resume(name, reply) => {
                let found = self.lane(&name).map(Lane::resume).is_some();
                let _ = reply.send(found);
            }
        }
    }

    pub fn views(&self) -> EndpointViews {
        self.views.clone()
    }

    /// Runs until `shutdown`, then gives in-flight requests the grace period to finish.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tasks = JoinSet::new();
        let mut recordings: JoinSet<Recorded> = JoinSet::new();
        let mut fetches: JoinSet<Fetched> = JoinSet::new();
        // Jobs of the fast path being made durable: stored in the tables or journaled.
        let mut keeping: JoinSet<fast_path::Kept> = JoinSet::new();
        let mut intake = self.intake.take();
        let new_work = self.outbox.new_work();
        // Paused and gone subscriptions stay so across restarts.
        if let Ok(held) = self.outbox.held().await {
            for (name, state) in held {
                if let Some(lane) = self.lane(&name) {
                    match state {
                        HoldState::Gone => lane.mark_gone(),
                        HoldState::Paused => lane.pause(),
                    }
                }
            }
        }
        let mut beat = tokio::time::interval(crate::health::BEAT);
        let wedge = crate::health::Wedge::from_env("delivery");
        loop {
            self.beat.beat();
            if let Some(w) = &wedge {
                w.block_if_due();
            }
            self.fill(&mut tasks, &done_tx, &mut fetches);
            self.publish_views();
            let deadline = self.fast.next_deadline();
            let wake = self.lanes.iter().filter_map(Lane::next_wake).chain(deadline).min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = new_work.notified() => self.lanes.iter_mut().for_each(Lane::poke),
                Some(fetched) = fetches.join_next(), if !fetches.is_empty() => self.fetched(fetched),
                Some(c) = self.control.recv() => self.control(c),
                Some(done) = done_rx.recv() => self.finish_wave(done, &mut done_rx, &mut recordings, &mut keeping),
                Some(recorded) = recordings.join_next(), if !recordings.is_empty() => self.recorded(recorded),
                Some(taken) = fast_path::next_intake(&mut intake) => self.take(taken, &mut keeping),
                Some(Ok(kept)) = keeping.join_next(), if !keeping.is_empty() => self.kept(kept, &mut recordings, &mut keeping),
                _ = sleep => self.overdue(&mut keeping),
                _ = beat.tick() => self.link.link.save_if_due(),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Ingest stops too: what it handed over goes to the outbox, and what is being
        // sent from memory is stored now, so nothing waits on an attempt past the grace.
        if let Some(rx) = &mut intake {
            rx.close();
            while let Ok(taken) = rx.try_recv() {
                self.forward(taken);
            }
        }
        let unpersisted = self.fast.all_unpersisted();
        self.persist(unpersisted, &mut keeping);
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace_s = self.grace.as_secs(), "Waiting for in-flight deliveries before exit.");
        }
        let drained = tokio::time::timeout(self.grace, async {
            while !tasks.is_empty() || !done_rx.is_empty() || !recordings.is_empty() || !keeping.is_empty() {
                tokio::select! {
                    Some(done) = done_rx.recv() => self.finish_wave(done, &mut done_rx, &mut recordings, &mut keeping),
                    Some(recorded) = recordings.join_next(), if !recordings.is_empty() => self.recorded(recorded),
                    Some(Ok(kept)) = keeping.join_next(), if !keeping.is_empty() => self.kept(kept, &mut recordings, &mut keeping),
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "Abandoned in-flight deliveries at shutdown; they are sent again after restart."
            );
            tasks.abort_all();
        }
        self.publish_views();
    }

    /// Starts what may start now on every lane that has reason to look, and the fetches
    /// that keep each lane supplied.
    fn fill(&mut self, tasks: &mut JoinSet<()>, done_tx: &mpsc::UnboundedSender<Done>, fetches: &mut JoinSet<Fetched>) {
        let now = Instant::now();
        if self.link.refresh(now) {
            // The profile changed: held priorities and rates change on every lane.
            self.lanes.iter_mut().for_each(Lane::poke);
        }
        let mut unused: Vec<usize> = self.lanes.iter().map(|l| l.unused_share(self.share)).collect();
        let mut kept: usize = unused.iter().sum();
        for (idx, own) in unused.iter_mut().enumerate() {
            let room = share::room(self.global.available_permits(), kept, *own);
            let lane = &mut self.lanes[idx];
            let starts = lane.next_starts_with(now, room, &mut self.link);
            let left = lane.unused_share(self.share);
            kept = kept - *own + left;
            *own = left;
            let Some(starts) = starts else { continue };
            for r in starts.fast {
                let Some(due) = self.fast.due(&r) else {
                    self.lanes[idx].fast_dropped();
                    continue;
                };
                let Ok(permit) = self.global.clone().try_acquire_owned() else {
                    self.lanes[idx].fast_not_started(r);
                    continue;
                };
                self.fast.started(&r);
                self.lanes[idx].fast_started(&due.delivery_id);
                spawn_attempt(self.attempt(idx, due, false, Some(r)), permit, tasks, done_tx);
            }
            for due in starts.due {
                let Ok(permit) = self.global.clone().try_acquire_owned() else {
                    self.lanes[idx].not_started(due.seq);
                    continue;
                };
                spawn_attempt(self.attempt(idx, due, starts.probe, None), permit, tasks, done_tx);
            }
            for members in starts.batches {
                let Ok(permit) = self.global.clone().try_acquire_owned() else {
                    self.lanes[idx].batch_not_started(&members);
                    continue;
                };
                let mut job = self.attempt(idx, members[0].clone(), starts.probe, None);
                job.batch = members;
                spawn_attempt(job, permit, tasks, done_tx);
            }
            let lane = &self.lanes[idx];
            if let Some(FetchRequest { asked, skip, fifo, lowest }) = starts.fetch {
                let (outbox, name) = (self.outbox.clone(), lane.name().to_string());
                fetches.spawn(async move {
                    let batch = outbox.due(&name, crate::clock::sched_ms(), asked, fifo, skip, lowest).await;
                    Fetched { lane: idx, asked, batch }
                });
            }
        }
    }

    /// An attempt of `due` by lane `idx`.
    fn attempt(&self, idx: usize, due: crate::outbox::Due, probe: bool, fast: Option<fast::FastRef>) -> Attempt {
        let lane = &self.lanes[idx];
        Attempt {
            lane: idx,
            sub: lane.sub().clone(),
            client: lane.client().clone(),
            due,
            probe,
            fast,
            metrics: self.metrics.clone(),
            batch: Vec::new(),
        }
    }

    fn fetched(&mut self, fetched: Result<Fetched, tokio::task::JoinError>) {
        let Ok(Fetched { lane, asked, batch }) = fetched else { return };
        let Some(lane) = self.lanes.get_mut(lane) else { return };
        match batch {
            Ok(batch) => lane.fetched(batch, asked),
            Err(e) => {
                tracing::warn!(subscription = %lane.name(), error = %e, "Cannot read due deliveries; trying again in a second.");
                lane.fetch_failed();
            }
        }
    }

    /// Sends the results of every attempt that has finished to the outbox as one
    /// transaction and frees their slots at once; each delivery stays in `recording`
    /// (never fetched) until [`Dispatcher::recorded`] learns that the commit is done.
    fn finish_wave(
        &mut self,
        first: Done,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
        recordings: &mut JoinSet<Recorded>,
        keeping: &mut JoinSet<fast_path::Kept>,
    ) {
        let mut wave = vec![first];
        while let Ok(done) = done_rx.try_recv() {
            wave.push(done);
        }
        // An endpoint that answers again: the results held for a shared commit while it
        // was away (their rows are skipped until committed) go now, so its backlog
        // drains at once instead of after the linger.
        let back = wave.iter().any(|d| d.probe && !matches!(d.verdict, Verdict::Offline { .. }));
        // A Retry-After hold: the held deliveries' results must be on disk before it ends,
        // so that the lane reads them again ahead of newer ones.
        let held = wave
            .iter()
            .any(|d| matches!(d.status, Some(429 | 503)) && matches!(d.verdict, Verdict::Retry { after: Some(_), .. }));
        let mut durable = Vec::with_capacity(wave.len());
        let mut fast = Vec::new();
        for done in wave {
            if done.fast.is_some() {
                let lane = done.lane;
                if let Some(record) = self.finish_fast(done, keeping) {
                    fast.push((lane, record));
                }
                continue;
            }
            self.finish(&done);
            durable.push((done.lane, done.seq, done.record));
            durable.extend(done.rest.into_iter().map(|(seq, record)| (done.lane, seq, record)));
        }
        self.record_wave(durable, fast, recordings, back || held);
        // A lane that stopped answering (offline, or a Retry-After holds it) stores what
        // waits for it from memory now, in event order behind what it holds, instead of
        // sending it first when the hold ends (the held ones would starve) or storing it
        // one by one at each deadline.
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].has_fast_queued() && self.lanes[lane].unreachable() {
                let queued = self.fast.queued_in(lane);
                self.persist(queued, keeping);
            }
        }
    }

    /// Commits attempts' results in one transaction: `durable` ones by their row,
    /// `fast` ones (their jobs stored) by delivery id. `hurry`: commit now, with what
    /// the writer holds.
    fn record_wave(
        &mut self,
        durable: Vec<(usize, i64, AttemptRecord)>,
        fast: Vec<(usize, AttemptRecord)>,
        recordings: &mut JoinSet<Recorded>,
        hurry: bool,
    ) {
        if durable.is_empty() && fast.is_empty() {
            return;
        }
        let retry = |r: &AttemptRecord| matches!(r.next, NextState::Retry { .. });
        let seqs: Vec<_> = durable.iter().map(|(lane, seq, r)| (*lane, *seq, retry(r))).collect();
        let fast_ids: Vec<_> = fast.iter().map(|(lane, r)| (*lane, r.audit.delivery_id.clone(), retry(r))).collect();
        // A FIFO lane waits on its head's result; nothing else does.
        let urgent = seqs
            .iter()
            .map(|(lane, ..)| lane)
            .chain(fast_ids.iter().map(|(lane, ..)| lane))
            .any(|lane| self.lanes.get(*lane).is_some_and(Lane::is_fifo))
            || hurry;
        // A far endpoint's results nobody waits on may wait seconds for a commit to share
        // (while few are held): spaced by its answer time, each would otherwise get a
        // commit of its own (docs/decisions.md, "Holding the ack"). A near one's come
        // close enough together to share one within the writer's few milliseconds.
        let lazy = !urgent && seqs.iter().all(|(lane, ..)| self.lanes.get(*lane).is_some_and(Lane::far));
        let records: Vec<AttemptRecord> =
            durable.into_iter().map(|(.., r)| r).chain(fast.into_iter().map(|(_, r)| r)).collect();
        let outbox = self.outbox.clone();
        recordings.spawn(async move {
            let attempts = records.len();
            if let Err(e) = outbox.record(records, urgent, lazy).await {
                tracing::warn!(error = %e, attempts, "Cannot record attempts; they are sent again after restart.");
            }
            Recorded { seqs, fast_ids }
        });
    }

    /// A wave's results are on disk: its deliveries may be fetched again.
    fn recorded(&mut self, recorded: Result<Recorded, tokio::task::JoinError>) {
        let Ok(recorded) = recorded else { return };
        for (lane, seq, retry) in recorded.seqs {
            if let Some(lane) = self.lanes.get_mut(lane) {
                lane.release(seq, retry);
            }
        }
        for (lane, id, retry) in recorded.fast_ids {
            if let Some(lane) = self.lanes.get_mut(lane) {
                lane.fast_settled(&id, retry);
            }
        }
    }

    fn finish(&mut self, done: &Done) {
        let Some(lane) = self.lanes.get_mut(done.lane) else { return };
        lane.paid(done.sent_bytes, done.estimate, &mut self.link);
        let seqs: Vec<i64> = std::iter::once(done.seq).chain(done.rest.iter().map(|(seq, _)| *seq)).collect();
        lane.finished(&seqs, &done.verdict, done.status, done.probe, done.took(), Instant::now());
        self.after_attempt(done.lane, &done.verdict, done.skew.clone());
    }

    /// What any finished attempt implies beyond its lane: a 410 holds the subscription,
    /// and a freed slot may let every lane waiting on the global limit start.
    fn after_attempt(&mut self, lane: usize, verdict: &Verdict, skew: Option<Option<String>>) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.skew(skew);
        }
        if let Some(lane) = self.lanes.get(lane)
            && matches!(verdict, Verdict::Failed { gone: true, .. })
        {
            tracing::error!(subscription = %lane.name(), url = %lane.sub().url,
                "The endpoint answered 410 Gone; delivery to this subscription is paused until it is resumed.");
            let (outbox, name) = (self.outbox.clone(), lane.name().to_string());
            tokio::spawn(async move { outbox.hold(&name, Some(HoldState::Gone)).await });
        }
        self.lanes.iter_mut().for_each(Lane::mark_dirty);
    }

    fn publish_views(&self) {
        let views = self.lanes.iter().map(Lane::view).collect();
        if let Ok(mut v) = self.views.lock() {
            *v = views;
        }
    }
}

/// Runs `job` as a task holding its global slot; its result comes back on `done_tx`.
fn spawn_attempt(
    job: Attempt,
    permit: tokio::sync::OwnedSemaphorePermit,
    tasks: &mut JoinSet<()>,
    done_tx: &mpsc::UnboundedSender<Done>,
) {
    let done_tx = done_tx.clone();
    tasks.spawn(async move {
        let done = job.run().await;
        drop(permit);
        let _ = done_tx.send(done);
    });
}

/// The deliveries of a wave whose results committed (or could not be).
struct Recorded {
    /// (lane, delivery seq, whether it stays pending for a retry)
    seqs: Vec<(usize, i64, bool)>,
    /// The same for fast-path attempts whose job was stored: (lane, delivery id, retry).
    fast_ids: Vec<(usize, String, bool)>,
}

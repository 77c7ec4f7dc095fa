//! The dispatcher: takes due deliveries from the outbox and sends them, within the global
//! and per-subscription limits, the rate limits and each endpoint's state. Each attempt is
//! prepare → send → classify → record. A finished attempt frees its slot at once, so the
//! next request starts while its result commits; until that commit the delivery is
//! *recording*: never fetched again, and on a FIFO lane it still holds the lane's one slot.

mod attempt;
pub mod endpoint;
pub mod http;
mod lane;
pub mod outcome;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::now_ms;
use crate::health::Beat;
use crate::live::{Control, DispatcherHandle, EndpointViews};
use crate::outbox::{HoldState, NextState, Outbox, OutboxError};
use attempt::{Attempt, Done};
use endpoint::Endpoint;
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
        Ok(Dispatcher {
            lanes,
            outbox,
            global: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            grace: config.delivery.shutdown_grace,
            views: Arc::new(Mutex::new(Vec::new())),
            handle,
            control,
            beat,
        })
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
            let wake = self.lanes.iter().filter_map(Lane::next_wake).min();
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
                Some(done) = done_rx.recv() => self.finish_wave(done, &mut done_rx, &mut recordings),
                Some(recorded) = recordings.join_next(), if !recordings.is_empty() => self.recorded(recorded),
                _ = sleep => {}
                _ = beat.tick() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace_s = self.grace.as_secs(), "Waiting for in-flight deliveries before exit.");
        }
        let drained = tokio::time::timeout(self.grace, async {
            while !tasks.is_empty() || !done_rx.is_empty() || !recordings.is_empty() {
                tokio::select! {
                    Some(done) = done_rx.recv() => self.finish_wave(done, &mut done_rx, &mut recordings),
                    Some(recorded) = recordings.join_next(), if !recordings.is_empty() => self.recorded(recorded),
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
        for idx in 0..self.lanes.len() {
            let lane = &mut self.lanes[idx];
            let Some(starts) = lane.next_starts(now, self.global.available_permits()) else { continue };
            for due in starts.due {
                let Ok(permit) = self.global.clone().try_acquire_owned() else {
                    lane.not_started(due.seq);
                    continue;
                };
                let job = Attempt {
                    lane: idx,
                    sub: lane.sub().clone(),
                    client: lane.client().clone(),
                    due,
                    probe: starts.probe,
                };
                let done_tx = done_tx.clone();
                tasks.spawn(async move {
                    let done = job.run().await;
                    drop(permit);
                    let _ = done_tx.send(done);
                });
            }
            if let Some(FetchRequest { asked, skip, fifo }) = starts.fetch {
                let (outbox, name) = (self.outbox.clone(), lane.name().to_string());
                fetches.spawn(async move {
                    let batch = outbox.due(&name, now_ms(), asked, fifo, skip).await;
                    Fetched { lane: idx, asked, batch }
                });
            }
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
    ) {
        let mut wave = vec![first];
        while let Ok(done) = done_rx.try_recv() {
            wave.push(done);
        }
        let mut records = Vec::with_capacity(wave.len());
        let mut seqs = Vec::with_capacity(wave.len());
        for done in wave {
            seqs.push((done.lane, done.seq, matches!(done.record.next, NextState::Retry { .. })));
            self.finish(&done);
            records.push(done.record);
        }
        // A FIFO lane waits on its head's result; nothing else does.
        let urgent = seqs.iter().any(|(lane, ..)| self.lanes.get(*lane).is_some_and(Lane::is_fifo));
        let outbox = self.outbox.clone();
        recordings.spawn(async move {
            let attempts = records.len();
            if let Err(e) = outbox.record(records, urgent).await {
                tracing::warn!(error = %e, attempts, "Cannot record attempts; they are sent again after restart.");
            }
            Recorded { seqs }
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
    }

    fn finish(&mut self, done: &Done) {
        let Some(lane) = self.lanes.get_mut(done.lane) else { return };
        lane.finished(done.seq, &done.verdict, done.status, done.probe, Instant::now());
        if matches!(done.verdict, Verdict::Failed { gone: true, .. }) {
            tracing::error!(subscription = %lane.name(), url = %lane.sub().url,
                "The endpoint answered 410 Gone; delivery to this subscription is paused until it is resumed.");
            let (outbox, name) = (self.outbox.clone(), lane.name().to_string());
            tokio::spawn(async move { outbox.hold(&name, Some(HoldState::Gone)).await });
        }
        // A slot anywhere frees capacity for every lane waiting on the global limit.
        self.lanes.iter_mut().for_each(Lane::mark_dirty);
    }

    fn publish_views(&self) {
        let views = self.lanes.iter().map(Lane::view).collect();
        if let Ok(mut v) = self.views.lock() {
            *v = views;
        }
    }
}

/// The deliveries of a wave whose results committed (or could not be).
struct Recorded {
    /// (lane, delivery seq, whether it stays pending for a retry)
    seqs: Vec<(usize, i64, bool)>,
}

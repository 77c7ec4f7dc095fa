//! The dispatcher: takes due deliveries from the outbox and sends them, within the global
//! and per-subscription limits, the rate limits and each endpoint's state. Each attempt is
//! prepare → send → classify → record. A finished attempt frees its slot at once, so the
//! next request starts while its result commits; until that commit the delivery is
//! *recording*: never fetched again, and on a FIFO lane it still holds the lane's one slot.

pub mod endpoint;
pub mod http;
mod lane;
pub mod outcome;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Ordering, Subscription};
use crate::event::now_ms;
use crate::health::Beat;
use crate::outbox::{AttemptRecord, Due, NextState, Outbox, Terminal};
use endpoint::{Endpoint, State};
use lane::{Fetched, Lane};
use outcome::{Verdict, classify_error, classify_status, needs_operator};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription {name}: {source}")]
    Client { name: String, source: http::ClientError },
}

/// What the status socket and heartbeat see of each subscription's endpoint.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EndpointView {
    pub name: String,
    pub url: String,
    pub state: State,
    pub in_flight: usize,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Unix ms of the next offline probe, when offline.
    pub next_attempt_at_ms: Option<i64>,
}

pub type EndpointViews = Arc<Mutex<Vec<EndpointView>>>;

/// Orders for a running dispatcher (from the status socket).
#[derive(Debug)]
pub enum Control {
    /// Stop starting deliveries to a subscription; the reply says if it exists.
    Pause(String, tokio::sync::oneshot::Sender<bool>),
    Resume(String, tokio::sync::oneshot::Sender<bool>),
}

/// Sends [`Control`] orders to the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherHandle(mpsc::UnboundedSender<Control>);

impl DispatcherHandle {
    async fn ask(&self, make: impl FnOnce(tokio::sync::oneshot::Sender<bool>) -> Control) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send(make(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub async fn pause(&self, subscription: &str) -> bool {
        self.ask(|tx| Control::Pause(subscription.to_string(), tx)).await
    }

    pub async fn resume(&self, subscription: &str) -> bool {
        self.ask(|tx| Control::Resume(subscription.to_string(), tx)).await
    }
}

/// One finished attempt, reported back to the loop before its record is committed.
struct Done {
    lane: usize,
    seq: i64,
    verdict: Verdict,
    status: Option<u16>,
    probe: bool,
    /// What the outbox must record; the dispatcher commits a wave of these at once.
    record: AttemptRecord,
}

pub struct Dispatcher {
    lanes: Vec<Lane>,
    outbox: Outbox,
    global: Arc<Semaphore>,
    grace: Duration,
    views: EndpointViews,
    control_tx: mpsc::UnboundedSender<Control>,
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
        let (control_tx, control) = mpsc::unbounded_channel();
        Ok(Dispatcher {
            lanes,
            outbox,
            global: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            grace: config.delivery.shutdown_grace,
            views: Arc::new(Mutex::new(Vec::new())),
            control_tx,
            control,
            beat,
        })
    }

    pub fn handle(&self) -> DispatcherHandle {
        DispatcherHandle(self.control_tx.clone())
    }

    fn lane(&mut self, name: &str) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.sub.name == name)
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Pause(name, reply) => {
                let found = self.lane(&name).map(|l| l.endpoint.pause()).is_some();
                let _ = reply.send(found);
            }
            Control::Resume(name, reply) => {
                let found = self
                    .lane(&name)
                    .map(|l| {
                        l.endpoint.resume();
                        l.poke();
                    })
                    .is_some();
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
                    match state.as_str() {
                        "gone" => lane.endpoint.mark_gone(),
                        _ => lane.endpoint.pause(),
                    }
                }
            }
        }
        let mut beat = tokio::time::interval(crate::health::BEAT);
        let started = Instant::now();
        loop {
            self.beat.beat();
            crate::health::wedge_if_asked("delivery", started);
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
            let timer_fired = lane.timer_fired(now);
            if !lane.dirty && !timer_fired {
                continue;
            }
            lane.dirty = false;
            let fifo = lane.sub.ordering == Ordering::Fifo;
            let limit = if fifo { 1 } else { lane.sub.max_in_flight };
            // FIFO: the next event waits until the head's result is on disk, so that a
            // head to be retried is fetched again before anything behind it.
            let busy = lane.in_flight.len() + if fifo { lane.recording.len() } else { 0 };
            let (room, wake) = lane.endpoint.capacity(now, busy, limit);
            lane.wake_at = wake;
            let room = room.min(self.global.available_permits());
            if room == 0 {
                // Nothing may start: look again on a completion, new work or the wake time.
                continue;
            }
            let probe = lane.endpoint.state == State::Offline;
            // A FIFO lane or a probe sends exactly what it fetched for this start.
            let exact = fifo || probe;
            let take = room.min(lane.prefetched.len());
            let fresh: Vec<Due> = lane.prefetched.drain(..take).collect();
            if exact {
                lane.prefetched.clear();
            }
            lane.endpoint.started(fresh.len());
            let started = fresh.len();
            for due in fresh {
                let Ok(permit) = self.global.clone().try_acquire_owned() else { break };
                lane.in_flight.insert(due.seq);
                let job = Attempt { lane: idx, sub: lane.sub.clone(), client: lane.client.clone(), due, probe };
                let done_tx = done_tx.clone();
                tasks.spawn(async move {
                    let done = job.run().await;
                    drop(permit);
                    let _ = done_tx.send(done);
                });
            }
            if let Some((asked, skip)) = lane.fetch_request(room - started, exact, fifo) {
                lane.fetch_started();
                let (outbox, name) = (self.outbox.clone(), lane.sub.name.clone());
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
                tracing::warn!(subscription = %lane.sub.name, error = %e, "Cannot read due deliveries; trying again in a second.");
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
        let urgent =
            seqs.iter().any(|(lane, ..)| self.lanes.get(*lane).is_some_and(|l| l.sub.ordering == Ordering::Fifo));
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
        lane.finished(done.seq);
        lane.endpoint.observe(&done.verdict, done.status, done.probe, Instant::now(), fastrand::f64());
        lane.last_status = done.status.or(lane.last_status);
        lane.last_error = match &done.verdict {
            Verdict::Delivered => None,
            Verdict::Retry { reason, .. } | Verdict::Offline { reason } | Verdict::Failed { reason, .. } => {
                Some(reason.clone())
            }
        };
        if matches!(done.verdict, Verdict::Failed { gone: true, .. }) {
            tracing::error!(subscription = %lane.sub.name, url = %lane.sub.url,
                "The endpoint answered 410 Gone; delivery to this subscription is paused until it is resumed.");
            let outbox = self.outbox.clone();
            let repair =
                crate::outbox::Repair::Hold { subscription: lane.sub.name.clone(), state: Some("gone".into()) };
            tokio::spawn(async move { outbox.repair(repair).await });
        }
        // A slot anywhere frees capacity for every lane waiting on the global limit.
        self.lanes.iter_mut().for_each(|l| l.dirty = true);
    }

    fn publish_views(&self) {
        let views = self
            .lanes
            .iter()
            .map(|l| EndpointView {
                name: l.sub.name.clone(),
                url: l.sub.url.clone(),
                state: l.endpoint.state,
                in_flight: l.in_flight.len(),
                last_status: l.last_status,
                last_error: l.last_error.clone(),
                next_attempt_at_ms: l
                    .endpoint
                    .next_probe()
                    .map(|at| now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as i64),
            })
            .collect();
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

/// One attempt of one delivery, run as its own task.
struct Attempt {
    lane: usize,
    sub: Arc<Subscription>,
    client: reqwest::Client,
    due: Due,
    probe: bool,
}

impl Attempt {
    async fn run(self) -> Done {
        let started_ms = now_ms();
        let prepared = http::prepare(&self.sub, &self.due, SystemTime::now());
        let attempt = prepared.attempt;
        let sent = http::send(&self.client, &self.sub, prepared).await;
        let verdict = match (&sent.status, &sent.error) {
            (Some(status), _) => {
                classify_status(*status, sent.retry_after.as_deref(), sent.location.as_deref(), SystemTime::now())
            }
            (None, Some((kind, text))) => {
                if needs_operator(*kind) {
                    tracing::error!(subscription = %self.sub.name, url = %self.sub.url, error = %text,
                        "TLS failure talking to the endpoint; retrying, but an operator must fix the certificate or ca_file.");
                }
                classify_error(*kind, text)
            }
            (None, None) => classify_error(outcome::TransportError::Other, "no response"),
        };
        let next = next_state(&self.sub, &self.due, &verdict, started_ms + sent.duration.as_millis() as i64);
        let (error_kind, error) = match (&sent.error, &verdict) {
            (Some((kind, text)), _) => (Some(kind.as_str().to_string()), Some(text.clone())),
            (None, Verdict::Failed { reason, .. } | Verdict::Retry { reason, .. }) => {
                (Some("http".into()), Some(reason.clone()))
            }
            _ => (None, None),
        };
        tracing::debug!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, attempt,
            status = ?sent.status, ?next, "Attempt finished.");
        if let NextState::Terminal(Terminal::Failed) = next {
            tracing::warn!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, event_type = %self.due.event_type,
                attempt, error = error.as_deref().unwrap_or(""), "Delivery failed for good.");
        }
        let record = AttemptRecord {
            delivery_seq: self.due.seq,
            delivery_id: self.due.delivery_id.clone(),
            subscription: self.sub.name.clone(),
            event_type: self.due.event_type.clone(),
            attempt,
            started_ms,
            duration_ms: sent.duration.as_millis() as i64,
            status: sent.status,
            error_kind,
            error,
            snippet: sent.snippet,
            next,
        };
        Done { lane: self.lane, seq: self.due.seq, verdict, status: sent.status, probe: self.probe, record }
    }
}

/// The rule table's consequence for the delivery row.
pub fn next_state(sub: &Subscription, due: &Due, verdict: &Verdict, now_ms: i64) -> NextState {
    match verdict {
        Verdict::Delivered => NextState::Terminal(Terminal::Delivered),
        Verdict::Failed { .. } => NextState::Terminal(Terminal::Failed),
        // Unreachable: stays due; the endpoint's probe decides when it is tried again.
        Verdict::Offline { .. } => NextState::Retry { at_ms: now_ms, charge: false },
        Verdict::Retry { after, .. } => {
            let used = due.budget_used + 1;
            match schedule::retry_delay(&sub.retry, used, fastrand::f64()) {
                None => NextState::Terminal(Terminal::Failed),
                Some(delay) => {
                    let delay = after.unwrap_or(delay);
                    NextState::Retry { at_ms: now_ms + delay.as_millis() as i64, charge: true }
                }
            }
        }
    }
}

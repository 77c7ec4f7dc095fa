//! The MQTT side of ingest: a persistent session (stable client id, `clean_session =
//! false`), QoS 1 subscriptions, and manual acks sent in receive order only after the
//! outbox has committed — or, on the fast path, once the dispatcher has delivered every
//! delivery from memory. The poll loop never waits: a separate acker task waits on the
//! commit watermark (or the dispatcher's word) and sends the acks, in receive order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Router;
use super::breaker::{self, Breaker};
use super::session::{self, Client, Driver, Incoming, Message, Receipt, SessionError};
use super::subscribe::{Answered, Subscriptions};
use crate::config::MqttConfig;
use crate::event::now_ms;
use crate::handoff::{Intake, Resolution};
use crate::health::Beat;
use crate::live::{MqttView, update_mqtt as update};
use crate::outbox::{Inbound, Outbox};
use crate::text::printable;

/// Reconnects after a session that lasted less than [`STABLE`] wait 1 s, doubling to
/// this, with ±20 % jitter: a broker that hangs up at once is never hammered.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session this long was a real one: the next loss reconnects at once.
const STABLE: Duration = Duration::from_secs(5);

use super::session::HELD_MAX;

/// Copies of a payload the agent may hold at once for a message taken but not yet acked:
/// the payload, its decoded JSON (the event's data), and an envelope built to send it.
const HELD_COPIES: usize = 3;

/// A message's share of [`HELD_MAX`]: one, plus one per 4 KiB of what it holds.
fn weight(payload_len: usize) -> u32 {
    u32::try_from(1 + payload_len.saturating_mul(HELD_COPIES) / 4096).unwrap_or(HELD_MAX).min(HELD_MAX)
}

/// A taken message's share of [`HELD_MAX`], given back once its ack is queued.
type Held = Option<tokio::sync::OwnedSemaphorePermit>;

/// Runs ingest until `shutdown`; then sends the acks of what has committed and
/// disconnects.
/// With `intake`, messages go to the dispatcher (the fast path), which sends them from
/// memory or hands them to the outbox; without, straight to the outbox. `breaker`
/// quarantines, undecoded, a message the agent died on at an earlier start.
// Each argument is a separate wire from `app`; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: MqttConfig,
    router: Router,
    outbox: Outbox,
    intake: Option<mpsc::UnboundedSender<Intake>>,
    breaker: Breaker,
    view: MqttView,
    beat: Beat,
    shutdown: CancellationToken,
) {
    update(&view, |v| v.url = cfg.url.clone());
    let (client, eventloop) = match session::open(&cfg) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(error = %e, ca_file = ?cfg.ca_file, client_cert = ?cfg.client_cert, client_key = ?cfg.client_key,
                "Cannot read the MQTT CA file or client certificate; ingest is not running.");
            update(&view, |v| v.last_error = Some(e.to_string()));
            shutdown.cancelled().await;
            return;
        }
    };
    // The event loop is polled by a task of its own and never cancelled mid-poll; this
    // loop only takes finished events from it.
    let (events_tx, mut events) = mpsc::channel(256);
    let driver_stop = CancellationToken::new();
    // What is held counts from the moment the driver reads a message, so the channel to
    // this loop holds no more than the bound either.
    let room = Arc::new(tokio::sync::Semaphore::new(HELD_MAX as usize));
    let driver = tokio::spawn(drive(eventloop, events_tx, room, driver_stop.clone()));
    let generation = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_in_order(client.clone(), outbox.committed(), ack_rx, generation.clone()));
    let filters = router.filters();
    let mut subs = Subscriptions::new(filters.clone(), router.type_filters());
    let side_stop = shutdown.child_token();
    let side = tokio::spawn(super::side::broker_stats(cfg.clone(), view.clone(), side_stop.clone()));
    let mut taker =
        Taker { seq: 0, intake, outbox, ack_tx, generation: generation.clone(), view: view.clone(), breaker };
    let mut waiting = Waiting::default();
    let mut tick = tokio::time::interval(crate::health::BEAT);
    let wedge = crate::health::Wedge::from_env("ingest");
    loop {
        beat.beat();
        if let Some(w) = &wedge {
            w.block_if_due();
        }
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if !waiting.release(&router, &mut taker, false) {
                    break;
                }
                continue;
            }
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        let (event, held) = event;
        match event {
            Ok(Incoming::ConnAck { session_present }) => {
                generation.fetch_add(1, Ordering::SeqCst);
                let routes_too = connected(&cfg, &view, &filters, session_present);
                // The ROS type topics are asked for again on every connect so the broker
                // sends the retained announcements again; at QoS 0, so they never wait
                // behind the in-flight window that held messages fill.
                if let Err(e) = subs.ask(&client, routes_too) {
                    tracing::warn!(error = %e, "Cannot queue the MQTT subscriptions.");
                }
            }
            Ok(Incoming::SubAck { refused }) => {
                if let Answered::Routes { granted } = subs.answered(&refused, &client, &view) {
                    tracing::info!(filters = ?granted, "Subscribed to the route topics.");
                    update(&view, |v| v.subscribed = true);
                }
            }
            Ok(Incoming::Publish(publish)) => {
                if router.is_type_topic(&publish.topic) {
                    let inbound = taker.learn(&router, &publish);
                    let ok = match (publish.needs_ack, inbound) {
                        (true, inbound) => waiting.take_or_hold(&router, &mut taker, publish, held, Some(inbound)),
                        (false, q @ Inbound::Quarantine(_)) => taker.take(&router, publish, held, Some(q)),
                        (false, _) => true,
                    };
                    if !ok || !waiting.release(&router, &mut taker, false) {
                        break;
                    }
                    continue;
                }
                if !waiting.take_or_hold(&router, &mut taker, publish, held, None) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                subs.hung_up(&view);
                disconnected(&cfg, &view, &e);
            }
        }
    }
    side_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), side).await;
    drop(taker);
    say_goodbye(client, acker, events, driver_stop, driver).await;
    update(&view, |v| v.connected = false);
}

/// Turns messages into outbox records and queues their acks, in receive order.
struct Taker {
    seq: u64,
    intake: Option<mpsc::UnboundedSender<Intake>>,
    outbox: Outbox,
    ack_tx: mpsc::UnboundedSender<Pending>,
    generation: Arc<AtomicU64>,
    view: MqttView,
    breaker: Breaker,
}

impl Taker {
    /// Routes (decodes) one message, under the breaker's mark; a message the agent died
    /// on before is quarantined without being decoded.
    fn route(&mut self, router: &Router, publish: &Message) -> Inbound {
        let key = breaker::key(&publish.topic, &publish.payload);
        if let Some(reason) = self.breaker.take_suspect(&key) {
            return router.quarantine_unread(&publish.topic, &publish.payload, reason);
        }
        self.breaker.begin(&key, &publish.topic);
        breaker::abort_if_asked(&publish.payload);
        let inbound = router.inbound_with(
            &publish.topic,
            &publish.payload,
            publish.dup,
            now_ms(),
            crate::clock::sched_ms(),
            &publish.props,
        );
        self.breaker.done(&key);
        if publish.retain { router.retained(&publish.topic, inbound) } else { inbound }
    }

    /// Reads a type announcement under the breaker's mark; says what was learnt, or why
    /// it cannot be used. Returns the quarantine of an announcement the agent died on.
    fn learn(&mut self, router: &Router, publish: &Message) -> Inbound {
        let key = breaker::key(&publish.topic, &publish.payload);
        if let Some(reason) = self.breaker.take_suspect(&key) {
            return router.quarantine_unread(&publish.topic, &publish.payload, reason);
        }
        self.breaker.begin(&key, &publish.topic);
        breaker::abort_if_asked(&publish.payload);
        let learnt = router.learn_type(&publish.topic, &publish.payload);
        self.breaker.done(&key);
        match learnt {
            Ok(Some((topic, name))) => {
                tracing::info!(topic = %printable(&topic), ros_type = %printable(&name), "Learnt a ROS message type.");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(type_topic = %printable(&publish.topic), reason = %printable(&e),
                "Cannot use a ROS type announcement; messages of its topic are quarantined with this reason."),
        }
        Inbound::Nothing
    }

    /// Routes `publish` (or takes `inbound` for it as given) and queues its ack, which
    /// keeps `held` until it is queued. False when the dispatcher or outbox has stopped:
    /// ingest stops too.
    fn take(&mut self, router: &Router, publish: Message, held: Held, inbound: Option<Inbound>) -> bool {
        self.take_into(router, publish, held, inbound, None)
    }

    /// [`Taker::take`]; with `slot`, the message's place among the acks was kept when it
    /// began to wait (see [`AckWhen::Later`]), and how it is acked goes there.
    fn take_into(
        &mut self,
        router: &Router,
        publish: Message,
        held: Held,
        inbound: Option<Inbound>,
        slot: Option<oneshot::Sender<(u64, AckWhen)>>,
    ) -> bool {
        self.seq += 1;
        let seq = self.seq;
        let mut inbound = match inbound {
            Some(given) => given,
            None => self.route(router, &publish),
        };
        if let Inbound::Event(e) = &mut inbound {
            e.clock = crate::clock::taken_unless_synced();
        }
        if let Inbound::Quarantine(q) = &inbound {
            tracing::warn!(topic = %printable(&q.topic), size = q.size, reason = %printable(&q.reason),
                "Quarantined an MQTT message.");
        }
        let when = match &self.intake {
            Some(tx) => {
                let (resolved, rx) = oneshot::channel();
                if tx.send(Intake { seq, inbound, resolved }).is_err() {
                    tracing::debug!("The dispatcher has stopped; ingest stops too.");
                    return false;
                }
                AckWhen::Resolved(rx)
            }
            None => {
                if self.outbox.ingest(seq, inbound).is_err() {
                    tracing::warn!("The outbox has stopped; ingest stops too.");
                    return false;
                }
                AckWhen::Committed
            }
        };
        update(&self.view, |v| v.received += 1);
        // A QoS 0 message goes through the acker too, unacked: its share of the bound is
        // given back when it is committed or delivered, not when it is taken.
        if let Some(slot) = slot {
            let _ = slot.send((seq, when));
            return true;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let receipt = publish.needs_ack.then(|| publish.into_receipt());
        let _ = self.ack_tx.send(Pending { seq, generation, receipt, when, _held: held });
        true
    }
}

/// Most messages held for their ROS type at once; past it the oldest is taken as it is
/// (quarantined). The broker's in-flight window usually keeps QoS 1 messages well below
/// this, but not always (mosquitto 2.0.11 sends past it once acks flow): hence a bound.
const WAITING_MAX: usize = 1000;

/// Messages held, unacked, until their topic's ROS type is announced (`payload =
/// "ros"`), each up to `ros.type_wait`. Each keeps its place among the acks (acks go in
/// receive order), and so does every later message of its topic; messages of other
/// topics are taken meanwhile, their acks queued behind.
#[derive(Default)]
struct Waiting(std::collections::VecDeque<Wait>);

struct Wait {
    publish: Message,
    until: tokio::time::Instant,
    inbound: Option<Inbound>,
    /// Where how it is acked goes once it is taken.
    slot: oneshot::Sender<(u64, AckWhen)>,
}

impl Waiting {
    fn take_or_hold(
        &mut self,
        router: &Router,
        taker: &mut Taker,
        publish: Message,
        held: Held,
        inbound: Option<Inbound>,
    ) -> bool {
        let awaits = inbound.is_none() && router.awaits_type(&publish.topic) && !router.type_wait.is_zero();
        let behind = self.0.iter().any(|w| w.publish.topic == publish.topic);
        if !awaits && !behind {
            return taker.take(router, publish, held, inbound) && self.release(router, taker, false);
        }
        if self.0.is_empty() {
            tracing::info!(topic = %printable(&publish.topic), wait = ?router.type_wait,
                "A ROS message came before its type; holding it, unacked, until the type is announced. Other topics go on.");
        }
        let (slot, later) = oneshot::channel();
        let generation = taker.generation.load(Ordering::SeqCst);
        let receipt = publish.needs_ack.then(|| publish.receipt());
        let _ = taker.ack_tx.send(Pending { seq: 0, generation, receipt, when: AckWhen::Later(later), _held: held });
        let until = tokio::time::Instant::now() + router.type_wait;
        self.0.push_back(Wait { publish, until, inbound, slot });
        self.release(router, taker, self.0.len() > WAITING_MAX)
    }

    /// Takes, in order, what no longer waits: its type is known or its wait is over; with
    /// `one_more` (room is needed), the oldest too. A message never passes an earlier one
    /// of its topic.
    fn release(&mut self, router: &Router, taker: &mut Taker, mut one_more: bool) -> bool {
        let now = tokio::time::Instant::now();
        let mut still: std::collections::VecDeque<Wait> = std::collections::VecDeque::new();
        while let Some(w) = self.0.pop_front() {
            let blocked = still.iter().any(|s| s.publish.topic == w.publish.topic);
            let due = w.inbound.is_some() || !router.awaits_type(&w.publish.topic) || w.until <= now || one_more;
            if blocked || !due {
                still.push_back(w);
                continue;
            }
            one_more = false;
            let Wait { publish, inbound, slot, .. } = w;
            if !taker.take_into(router, publish, None, inbound, Some(slot)) {
                self.0 = still;
                return false;
            }
        }
        self.0 = still;
        true
    }
}

/// A CONNACK: the view says connected. Says whether the route filters must be asked for
/// again: a broker that kept our session keeps our subscriptions; one that did not (first
/// start, or it lost its state) needs them again.
fn connected(cfg: &MqttConfig, view: &MqttView, filters: &[String], kept: bool) -> bool {
    tracing::info!(url = %cfg.url, client_id = %cfg.client_id, session_present = kept, "Connected to the MQTT broker.");
    update(view, |v| {
        v.connected = true;
        v.last_error = None;
    });
    let again = !kept || !view.lock().map(|v| v.subscribed).unwrap_or(false);
    if again && filters.is_empty() {
        tracing::warn!("No [[route]] is configured; nothing is subscribed.");
    }
    again
}

/// A connection error: the driver reconnects with backoff. Said once per loss, and once
/// per distinct reason while it cannot connect (a wrong port, then a wrong password),
/// not at every retry.
fn disconnected(cfg: &MqttConfig, view: &MqttView, e: &SessionError) {
    let error = e.to_string();
    let (was_connected, same_reason) =
        view.lock().map(|v| (v.connected, v.last_error.as_deref() == Some(&error))).unwrap_or((false, false));
    update(view, |v| {
        v.connected = false;
        v.last_error = Some(error);
    });
    if was_connected {
        tracing::warn!(error = %e, url = %cfg.url, "Lost the MQTT connection; reconnecting.");
    } else if !same_reason {
        tracing::warn!(error = %e, url = %cfg.url, client_id = %cfg.client_id,
            "Cannot connect to the MQTT broker; retrying with backoff. Nothing is ingested until it connects.");
    } else {
        tracing::debug!(error = %e, "MQTT connect failed again; retrying with backoff.");
    }
}

/// Sends the acks of everything already committed (the driver keeps polling, so they go
/// out), then disconnects. What is not acked here the broker sends again (DUP), and dedupe
/// recognises it.
async fn say_goodbye(
    client: Client,
    acker: tokio::task::JoinHandle<()>,
    mut events: mpsc::Receiver<(Result<Incoming, SessionError>, Held)>,
    driver_stop: CancellationToken,
    driver: tokio::task::JoinHandle<()>,
) {
    let _ = tokio::time::timeout(Duration::from_secs(2), acker).await;
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some((ev, _)) = events.recv().await {
            if ev.is_err() {
                break;
            }
        }
    })
    .await;
    driver_stop.cancel();
    let _ = driver.await;
}

/// Polls the event loop and hands each event over; after an error (the next poll
/// reconnects) it waits: briefly after a session that lasted, 1 s doubling to
/// [`BACKOFF_MAX`] (with jitter) while sessions end within [`STABLE`] of starting or
/// connects fail, whatever the cause.
///
/// Each message takes its share of [`HELD_MAX`] here, before it is handed over: QoS 0
/// too (nothing is acked, but what is taken is held until it is committed or delivered,
/// and a flood must not hold more than a QoS 1 one). Waiting for room stops the polling,
/// so TCP holds the broker back. A type announcement (QoS 0) takes none: messages waiting
/// for their type must never keep it from being read.
async fn drive(
    mut eventloop: Driver,
    tx: mpsc::Sender<(Result<Incoming, SessionError>, Held)>,
    room: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    let mut connected_at: Option<Instant> = None;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = eventloop.poll() => ev,
        };
        let failed = ev.is_err();
        if matches!(ev, Ok(Incoming::ConnAck { .. })) {
            connected_at = Some(Instant::now());
        }
        let held = match &ev {
            Ok(Incoming::Publish(p)) if p.needs_ack || !p.topic.starts_with(super::ros::TYPE_TOPIC_PREFIX) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    permit = room.clone().acquire_many_owned(weight(p.payload.len())) => permit.ok(),
                }
            }
            _ => None,
        };
        if tx.send((ev, held)).await.is_err() {
            return;
        }
        if failed {
            let lasted = connected_at.take().is_some_and(|t| t.elapsed() >= STABLE);
            let wait = if lasted {
                backoff = Duration::from_secs(1);
                Duration::from_millis(250)
            } else {
                let w = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                w
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// ±20 %: agents that lost one broker together do not come back in step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// When a message may be acked.
enum AckWhen {
    /// Once the commit watermark passes its seq.
    Committed,
    /// When the dispatcher says (delivered from memory, or handed to the outbox).
    Resolved(oneshot::Receiver<Resolution>),
    /// A message waiting for its ROS type keeps its place among the acks: its seq and
    /// how it is acked come once it is taken; messages after it are taken meanwhile.
    Later(oneshot::Receiver<(u64, AckWhen)>),
}

/// A message waiting for its ack.
struct Pending {
    seq: u64,
    /// The connection it came on.
    generation: u64,
    /// None for a QoS 0 message: nothing to ack, but its share is held until it is safe.
    receipt: Option<Receipt>,
    when: AckWhen,
    /// Its share of [`HELD_MAX`], given back when this is dropped (acked or not).
    _held: Held,
}

/// Acks each message once it is safe (see [`AckWhen`]), in the order received. An ack
/// for a message from an earlier connection is dropped: the broker resends that message
/// and its packet id may already name another one. A message the dispatcher gave up on
/// (it could not be stored) is not acked: the broker sends it again.
///
/// Acks are queued without waiting: one that finds the event loop's request channel full
/// waits here, in order, with the ones behind it, while their messages' share of
/// [`HELD_MAX`] is given back. Waiting on the channel instead would hold that share, and
/// a full share stops ingest, which stops the driver, the only thing that empties the
/// channel.
async fn ack_in_order(
    client: Client,
    mut committed: watch::Receiver<u64>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    generation: Arc<AtomicU64>,
) {
    let mut unsent: std::collections::VecDeque<(u64, Receipt)> = std::collections::VecDeque::new();
    loop {
        send_unsent(&client, &mut unsent, &generation);
        let next = if unsent.is_empty() {
            rx.recv().await
        } else {
            tokio::select! {
                next = rx.recv() => next,
                _ = tokio::time::sleep(Duration::from_millis(2)) => continue,
            }
        };
        let Some(Pending { seq, generation: conn_generation, receipt, when, _held }) = next else {
            // Ingest has stopped: what is committed still gets its ack while the driver
            // runs (`say_goodbye` gives it a moment).
            while !unsent.is_empty() {
                send_unsent(&client, &mut unsent, &generation);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            return;
        };
        let (seq, when) = match when {
            AckWhen::Later(rx) => match rx.await {
                Ok(taken) => taken,
                Err(_) => continue,
            },
            when => (seq, when),
        };
        let after_commit = match when {
            AckWhen::Committed => true,
            AckWhen::Resolved(rx) => match rx.await {
                Ok(Resolution::Now) => false,
                Ok(Resolution::AfterCommit) => true,
                Err(_) => continue,
            },
            AckWhen::Later(_) => continue,
        };
        if after_commit && committed.wait_for(|c| *c >= seq).await.is_err() {
            return;
        }
        if let Some(receipt) = receipt {
            unsent.push_back((conn_generation, receipt));
        }
    }
}

/// Queues what acks it can, in order; stops at the first that finds the channel full.
fn send_unsent(client: &Client, unsent: &mut std::collections::VecDeque<(u64, Receipt)>, generation: &AtomicU64) {
    while let Some((conn_generation, receipt)) = unsent.front() {
        if *conn_generation == generation.load(Ordering::SeqCst) && client.try_ack(receipt).is_err() {
            return;
        }
        unsent.pop_front();
    }
}

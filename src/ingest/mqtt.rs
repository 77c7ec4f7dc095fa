//! The MQTT side of ingest: a persistent session (stable client id, `clean_session =
//! false`), QoS 1 subscriptions, and manual acks sent in receive order only after the
//! outbox has committed — or, on the fast path, once the dispatcher has delivered every
//! delivery from memory. The poll loop never waits: a separate acker task waits on the
//! commit watermark (or the dispatcher's word) and sends the acks, in receive order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Router;
use super::session::{self, Client, Driver, Incoming, Message, SessionError};
use crate::config::MqttConfig;
use crate::delivery::fast::{Intake, Resolution};
use crate::event::now_ms;
use crate::health::Beat;
use crate::live::{MqttView, update_mqtt as update};
use crate::outbox::Outbox;
use crate::text::printable;

const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs ingest until `shutdown`; then sends the acks of what has committed and
/// disconnects.
/// With `intake`, messages go to the dispatcher (the fast path), which sends them from
/// memory or hands them to the outbox; without, straight to the outbox.
pub async fn run(
    cfg: MqttConfig,
    router: Router,
    outbox: Outbox,
    intake: Option<mpsc::UnboundedSender<Intake>>,
    view: MqttView,
    beat: Beat,
    shutdown: CancellationToken,
) {
    update(&view, |v| v.url = cfg.url.clone());
    let (client, eventloop) = match session::open(&cfg) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(error = %e, ca_file = ?cfg.ca_file, "Cannot read the MQTT CA file; ingest is not running.");
            update(&view, |v| v.last_error = Some(e.to_string()));
            shutdown.cancelled().await;
            return;
        }
    };
    // The event loop is polled by a task of its own and never cancelled mid-poll; this
    // loop only takes finished events from it.
    let (events_tx, mut events) = mpsc::channel(256);
    let driver_stop = CancellationToken::new();
    let driver = tokio::spawn(drive(eventloop, events_tx, driver_stop.clone()));
    let generation = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_in_order(client.clone(), outbox.committed(), ack_rx, generation.clone()));
    let filters = router.filters();
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(crate::health::BEAT);
    let wedge = crate::health::Wedge::from_env("ingest");
    loop {
        beat.beat();
        if let Some(w) = &wedge {
            w.block_if_due();
        }
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => continue,
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        match event {
            Ok(Incoming::ConnAck { session_present }) => {
                generation.fetch_add(1, Ordering::SeqCst);
                connected(&cfg, &view, &client, &filters, session_present);
            }
            Ok(Incoming::SubAck { granted }) => {
                tracing::info!(filters = ?filters, %granted, "Subscribed to the route topics.");
                update(&view, |v| v.subscribed = true);
            }
            Ok(Incoming::Publish(publish)) => {
                seq += 1;
                let mut inbound = router.inbound_with(
                    &publish.topic,
                    &publish.payload,
                    publish.dup,
                    now_ms(),
                    crate::clock::sched_ms(),
                    &publish.props,
                );
                if publish.retain {
                    inbound = router.retained(&publish.topic, inbound);
                }
                if let crate::outbox::Inbound::Event(e) = &mut inbound {
                    e.clock = crate::clock::taken_unless_synced();
                }
                if let crate::outbox::Inbound::Quarantine(q) = &inbound {
                    tracing::warn!(topic = %printable(&q.topic), size = q.size, reason = %printable(&q.reason),
                        "Quarantined an MQTT message.");
                }
                let when = match &intake {
                    Some(tx) => {
                        let (resolved, rx) = oneshot::channel();
                        if tx.send(Intake { seq, inbound, resolved }).is_err() {
                            tracing::debug!("The dispatcher has stopped; ingest stops too.");
                            break;
                        }
                        AckWhen::Resolved(rx)
                    }
                    None => {
                        if outbox.ingest(seq, inbound).is_err() {
                            tracing::warn!("The outbox has stopped; ingest stops too.");
                            break;
                        }
                        AckWhen::Committed
                    }
                };
                update(&view, |v| v.received += 1);
                if publish.needs_ack {
                    let _ = ack_tx.send(Pending { seq, generation: generation.load(Ordering::SeqCst), publish, when });
                }
            }
            Ok(_) => {}
            Err(e) => disconnected(&cfg, &view, &e),
        }
    }
    drop(ack_tx);
    say_goodbye(client, acker, events, driver_stop, driver).await;
    update(&view, |v| v.connected = false);
}

/// A CONNACK: the view says connected, and a broker that lost our session gets our
/// subscriptions again.
fn connected(cfg: &MqttConfig, view: &MqttView, client: &Client, filters: &[String], kept: bool) {
    tracing::info!(url = %cfg.url, client_id = %cfg.client_id, session_present = kept, "Connected to the MQTT broker.");
    update(view, |v| {
        v.connected = true;
        v.last_error = None;
    });
    // A broker that kept our session keeps our subscriptions; one that did not (first
    // start, or it lost its state) needs them again.
    if !kept || !view.lock().map(|v| v.subscribed).unwrap_or(false) {
        if filters.is_empty() {
            tracing::warn!("No [[route]] is configured; nothing is subscribed.");
        } else if let Err(e) = client.subscribe(filters) {
            tracing::warn!(error = %e, "Cannot queue the MQTT subscriptions.");
        }
    }
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
    mut events: mpsc::Receiver<Result<Incoming, SessionError>>,
    driver_stop: CancellationToken,
    driver: tokio::task::JoinHandle<()>,
) {
    let _ = tokio::time::timeout(Duration::from_secs(2), acker).await;
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(ev) = events.recv().await {
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
/// reconnects) it waits with a backoff that resets on a successful connect.
async fn drive(mut eventloop: Driver, tx: mpsc::Sender<Result<Incoming, SessionError>>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = eventloop.poll() => ev,
        };
        let failed = ev.is_err();
        if matches!(ev, Ok(Incoming::ConnAck { .. })) {
            backoff = Duration::from_millis(250);
        }
        if tx.send(ev).await.is_err() {
            return;
        }
        if failed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// When a message may be acked.
enum AckWhen {
    /// Once the commit watermark passes its seq.
    Committed,
    /// When the dispatcher says (delivered from memory, or handed to the outbox).
    Resolved(oneshot::Receiver<Resolution>),
}

/// A message waiting for its ack.
struct Pending {
    seq: u64,
    /// The connection it came on.
    generation: u64,
    publish: Message,
    when: AckWhen,
}

/// Acks each message once it is safe (see [`AckWhen`]), in the order received. An ack
/// for a message from an earlier connection is dropped: the broker resends that message
/// and its packet id may already name another one. A message the dispatcher gave up on
/// (it could not be stored) is not acked: the broker sends it again.
async fn ack_in_order(
    client: Client,
    mut committed: watch::Receiver<u64>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    generation: Arc<AtomicU64>,
) {
    while let Some(Pending { seq, generation: conn_generation, publish, when }) = rx.recv().await {
        let after_commit = match when {
            AckWhen::Committed => true,
            AckWhen::Resolved(rx) => match rx.await {
                Ok(Resolution::Now) => false,
                Ok(Resolution::AfterCommit) => true,
                Err(_) => continue,
            },
        };
        if after_commit && committed.wait_for(|c| *c >= seq).await.is_err() {
            return;
        }
        if conn_generation != generation.load(Ordering::SeqCst) {
            continue;
        }
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

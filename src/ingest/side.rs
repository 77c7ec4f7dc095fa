//! The side session: what the agent merely likes to have from the broker (mosquitto's
//! count of dropped messages, `$SYS/broker/publish/messages/dropped`) on a connection of
//! its own, so that a broker that refuses `$SYS` (an ACL), or hangs up on it (rumqttd),
//! costs the route session nothing. Refused once, it is dropped for the run with one INFO
//! line, and `status` says the drop count is not available.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::session::{self, Incoming};
use crate::config::MqttConfig;
use crate::live::{MqttView, update_mqtt as update};

/// Where mosquitto publishes how many messages it has dropped (retained, every
/// `sys_interval`); a broker that does not publish it is simply silent.
pub const BROKER_DROPPED_TOPIC: &str = "$SYS/broker/publish/messages/dropped";

/// A hang-up this soon after the SUBSCRIBE is the broker's answer to it.
const HUNG_UP_WITHIN: Duration = Duration::from_secs(5);
/// Failed connects in a row (the route session connected meanwhile) before giving up.
const GIVE_UP_AFTER: u32 = 3;
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Runs the side session until `shutdown`, or until the broker refuses it.
pub async fn broker_stats(cfg: MqttConfig, view: MqttView, shutdown: CancellationToken) {
    let Ok((client, mut driver)) = session::open_side(&cfg) else { return };
    let mut asked_at: Option<Instant> = None;
    let mut failures = 0u32;
    let mut backoff = Duration::from_secs(1);
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = driver.poll() => ev,
        };
        match ev {
            Ok(Incoming::ConnAck { .. }) => {
                failures = 0;
                backoff = Duration::from_secs(1);
                if client.subscribe_at_most_once(&[BROKER_DROPPED_TOPIC.to_string()]).is_ok() {
                    asked_at = Some(Instant::now());
                }
            }
            Ok(Incoming::SubAck { refused }) => {
                asked_at = None;
                if let Some(answer) = refused.into_iter().flatten().next() {
                    return unavailable(&view, &client, format!("SUBACK {answer}"));
                }
            }
            Ok(Incoming::Publish(p)) if p.topic == BROKER_DROPPED_TOPIC => dropped(&view, &p.payload),
            Ok(_) => {}
            Err(e) => {
                if asked_at.take().is_some_and(|t| t.elapsed() < HUNG_UP_WITHIN) {
                    return unavailable(&view, &client, "the broker closed the connection on SUBSCRIBE".into());
                }
                tracing::debug!(error = %e, "The side MQTT session (broker statistics) is down; retrying.");
                if view.lock().map(|v| v.connected).unwrap_or(false) {
                    failures += 1;
                    if failures >= GIVE_UP_AFTER {
                        return unavailable(&view, &client, format!("the side session cannot connect: {e}"));
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), driver.poll()).await;
}

fn unavailable(view: &MqttView, client: &session::Client, why: String) {
    tracing::info!(topic = BROKER_DROPPED_TOPIC, answer = %why,
        "The MQTT broker does not offer its drop count to us; status will not show it. Routes are not affected.");
    update(view, |v| v.unavailable.push(format!("broker drop count ({BROKER_DROPPED_TOPIC}): {why}")));
    client.disconnect();
}

/// The broker's count of dropped messages, into the view; said at WARN when it grows,
/// since a drop for our session is an event lost before the agent ever saw it.
fn dropped(view: &MqttView, payload: &[u8]) {
    let Some(n) = std::str::from_utf8(payload).ok().and_then(|t| t.trim().parse::<u64>().ok()) else { return };
    let before = view.lock().ok().and_then(|v| v.broker_dropped);
    update(view, |v| v.broker_dropped = Some(n));
    if before.is_some_and(|b| n > b) {
        tracing::warn!(
            dropped = n,
            new = n - before.unwrap_or(0),
            "The MQTT broker has dropped messages (a client's queue was full); raise its max_queued_messages (docs/oem.md)."
        );
    }
}

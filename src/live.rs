//! The read-only live views that the status socket, the heartbeat and the app share: the
//! MQTT connection's state, each endpoint's state, and the handle that sends orders to a
//! running dispatcher. Ingest and delivery write them; everyone else only reads. Owns no
//! loop, so it sits below all of them and none of them needs another's internals.

use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;

/// The MQTT connection as `status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MqttStatus {
    pub connected: bool,
    pub subscribed: bool,
    pub url: String,
    pub last_error: Option<String>,
    pub received: u64,
    /// What the broker says it has dropped since it started (mosquitto's
    /// `$SYS/broker/publish/messages/dropped`: a full queue for an offline or slow client,
    /// ours or another's); None when the broker does not say.
    pub broker_dropped: Option<u64>,
    /// Subscriptions the broker refused (by SUBACK, or by hanging up on them).
    pub refused: Vec<RefusedFilter>,
    /// What the agent would like from the broker and cannot have (its drop count on a
    /// broker without `$SYS`), in a sentence each.
    pub unavailable: Vec<String>,
}

/// A filter the broker refused, and how it said so.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RefusedFilter {
    pub filter: String,
    pub answer: String,
}

pub type MqttView = Arc<Mutex<MqttStatus>>;

pub fn new_mqtt_view() -> MqttView {
    Arc::new(Mutex::new(MqttStatus::default()))
}

/// Changes the MQTT view; a poisoned lock only loses the update.
pub fn update_mqtt(view: &MqttView, f: impl FnOnce(&mut MqttStatus)) {
    if let Ok(mut v) = view.lock() {
        f(&mut v);
    }
}

/// An endpoint's state, as attempts reveal it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Online,
    Offline,
    Degraded,
    Paused,
    Gone,
    /// Its certificate does not verify: a configuration fault an operator must fix.
    /// Probed like offline, with no retry budget spent.
    Tls,
    /// Its signatures carry a timestamp and the wall clock is not known good: waiting
    /// (`clock_policy = "wait"`).
    Clock,
    /// `enabled = false` in the config: no delivery is made for it, and only the config
    /// (and a reload) changes that; `pause` and `resume` do not apply.
    Disabled,
}

/// What the status socket and heartbeat see of each subscription's endpoint.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EndpointView {
    pub name: String,
    pub url: String,
    pub state: EndpointState,
    pub in_flight: usize,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Unix ms of the next offline probe, when offline.
    pub next_attempt_at_ms: Option<i64>,
    /// How far our clock is from the endpoint's, by its last `Date` header, in words,
    /// when that is more than a few seconds.
    pub clock_skew: Option<String>,
    /// The daily budget in the profile in force (what was sent is in `link::Link`).
    pub daily_budget: Option<u64>,
    /// Request bytes per second, in the link profile in force.
    pub max_rate: Option<u64>,
    /// Which priorities wait, and why (daily budget, metered link).
    pub held: Option<String>,
    /// The lowest priority (`Priority as i64`: 0 high, 2 low) that may go now; those
    /// below it wait for the reason in `held`.
    #[serde(skip)]
    pub sends_up_to: i64,
    /// A `Retry-After` from the endpoint holds the whole subscription for now.
    #[serde(skip)]
    pub retry_after_hold: bool,
}

pub type EndpointViews = Arc<Mutex<Vec<EndpointView>>>;

/// What every attempt adds to the metrics: how long it took, what came of it, and the
/// bytes it sent. Kept in memory from start (a restart begins again at 0, which
/// Prometheus counters allow), across reloads; the dispatcher writes, `/metrics` reads.
#[derive(Clone)]
pub struct AttemptMetrics {
    registry: prometheus::Registry,
    duration: prometheus::HistogramVec,
    attempts: prometheus::IntCounterVec,
    sent_bytes: prometheus::IntCounterVec,
}

impl Default for AttemptMetrics {
    fn default() -> Self {
        use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
        // The names and buckets are fixed, so making and registering them cannot fail.
        let duration = HistogramVec::new(
            HistogramOpts::new("attempt_duration_seconds", "How long attempts took, by subscription")
                .namespace("fleethook")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["subscription"],
        )
        .expect("a valid histogram");
        let attempts = IntCounterVec::new(
            Opts::new(
                "attempts_total",
                "Attempts since start, by subscription and result: delivered, retry (an answer that spends one \
                 retry), offline (no answer; no retry spent), tls (the certificate did not verify; no \
                 retry spent), failed, split (a batch refused with 413, sent again in halves), or resent (refused with 415 to a compressed body or 401 to an OAuth2 token, \
                 sent again at once)",
            )
            .namespace("fleethook"),
            &["subscription", "result"],
        )
        .expect("a valid counter");
        let sent_bytes = IntCounterVec::new(
            Opts::new(
                "sent_bytes_total",
                "Request bytes sent since start (request line, headers and body), by subscription",
            )
            .namespace("fleethook"),
            &["subscription"],
        )
        .expect("a valid counter");
        let registry = Registry::new();
        for c in [
            Box::new(duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempts.clone()),
            Box::new(sent_bytes.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        AttemptMetrics { registry, duration, attempts, sent_bytes }
    }
}

impl AttemptMetrics {
    /// One finished attempt. `result` is one of the [`AttemptMetrics::RESULTS`].
    pub fn observe(&self, subscription: &str, result: &str, duration: std::time::Duration, sent_bytes: u64) {
        self.duration.with_label_values(&[subscription]).observe(duration.as_secs_f64());
        self.attempts.with_label_values(&[subscription, result]).inc();
        self.sent_bytes.with_label_values(&[subscription]).inc_by(sent_bytes);
    }

    pub const RESULTS: [&str; 7] = ["delivered", "retry", "offline", "tls", "failed", "split", "resent"];

    /// Shows every subscription (with zeros) before its first attempt.
    pub fn declare(&self, subscription: &str) {
        let _ = self.duration.with_label_values(&[subscription]);
        for r in Self::RESULTS {
            let _ = self.attempts.with_label_values(&[subscription, r]);
        }
        let _ = self.sent_bytes.with_label_values(&[subscription]);
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// Orders for a running dispatcher (from the status socket).
#[derive(Debug)]
pub enum Control {
    /// Stop starting deliveries to a subscription; the reply says if it exists.
    Pause(String, oneshot::Sender<bool>),
    Resume(String, oneshot::Sender<bool>),
}

/// Sends [`Control`] orders to the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherHandle(mpsc::UnboundedSender<Control>);

/// A handle and the receiving end the dispatcher reads its orders from.
pub fn control_channel() -> (DispatcherHandle, mpsc::UnboundedReceiver<Control>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (DispatcherHandle(tx), rx)
}

impl DispatcherHandle {
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<bool>) -> Control) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.0.send(make(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// False when the subscription is unknown or the dispatcher is not running.
    pub async fn pause(&self, subscription: &str) -> bool {
        self.ask(|tx| Control::Pause(subscription.to_string(), tx)).await
    }

    pub async fn resume(&self, subscription: &str) -> bool {
        self.ask(|tx| Control::Resume(subscription.to_string(), tx)).await
    }
}

/// What follows the configuration, replaced as a whole on reload.
#[derive(Clone)]
pub struct Live {
    pub config: Arc<Config>,
    pub endpoints: EndpointViews,
    pub dispatcher: DispatcherHandle,
}

pub type SharedLive = Arc<RwLock<Live>>;

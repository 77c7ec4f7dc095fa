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
    /// Its signatures carry a timestamp and the wall clock is not known good: waiting
    /// (`clock_policy = "wait"`).
    Clock,
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
}

pub type EndpointViews = Arc<Mutex<Vec<EndpointView>>>;

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

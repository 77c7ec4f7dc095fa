//! The config file exactly as written: strings where the typed config has durations, sizes
//! and URLs, so that converting them can report the key that was wrong.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub device_id: Option<String>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default)]
    pub heartbeat: RawHeartbeat,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub ros: RawRos,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub link: RawLink,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<RawSubscription>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub keep_alive: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub max_payload: Option<String>,
    pub version: Option<u64>,
    pub broker_max_inflight: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub path: Option<String>,
    pub max_bytes: Option<String>,
    pub when_full: Option<String>,
    pub synchronous: Option<String>,
    pub audit_per_subscription: Option<u64>,
    pub write_behind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    pub socket: Option<String>,
    pub socket_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRos {
    pub msg_path: Option<Vec<String>>,
    pub type_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub max_in_flight: Option<u64>,
    pub offline_probe_max: Option<String>,
    pub shutdown_grace: Option<String>,
    pub proxy: Option<String>,
    pub no_proxy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub topic: String,
    pub event: String,
    pub device_id: Option<String>,
    pub dedupe: Option<String>,
    pub priority: Option<String>,
    pub ttl: Option<String>,
    pub collapse: Option<bool>,
    pub retained: Option<String>,
    pub payload: Option<String>,
}

/// A key that takes one string or a list of them (secrets, for rotation).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    pub name: String,
    pub url: String,
    pub events: Option<Vec<String>>,
    pub secret: Option<OneOrMany>,
    pub secret_file: Option<OneOrMany>,
    pub secret_env: Option<OneOrMany>,
    pub secret_credential: Option<OneOrMany>,
    pub signature: Option<String>,
    pub clock_policy: Option<String>,
    pub header_prefix: Option<String>,
    pub format: Option<String>,
    pub retry: Option<Vec<String>>,
    pub method: Option<String>,
    pub headers: Option<toml::Table>,
    pub ordering: Option<String>,
    pub max_in_flight: Option<u64>,
    pub rate_limit: Option<String>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_age: Option<String>,
    pub allow_http: Option<bool>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub compression: Option<String>,
    pub batch: Option<RawBatch>,
    pub max_rate: Option<String>,
    pub daily_budget: Option<String>,
    pub metered: Option<RawMeteredSubscription>,
    pub summary: Option<String>,
    pub enabled: Option<bool>,
    pub routing_key: Option<String>,
    pub api_key: Option<String>,
    pub proxy: Option<String>,
    pub auth: Option<RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub max_rate: Option<String>,
    pub metered: Option<RawMetered>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetered {
    pub max_rate: Option<String>,
    pub hold: Option<String>,
}

/// A subscription's `metered = { … }`: what changes while the link is metered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeteredSubscription {
    pub max_rate: Option<String>,
    pub daily_budget: Option<String>,
    pub batch: Option<RawBatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    pub max_events: Option<u64>,
    pub max_bytes: Option<String>,
    pub max_wait: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub bearer_file: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_credential: Option<String>,
    pub scope: Option<String>,
}

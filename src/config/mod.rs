//! The typed configuration (docs/configuration.md): defaults, validation, and errors that name the
//! file, the line and the key. Loaded once in `main` and passed down; never a global.

mod build;
#[cfg(test)]
mod docs_tests;
pub use build::auth::{Auth, OAuth2};
pub use build::batch::{Batch, BatchFormat};
pub use build::link::{Hold, LinkConfig, MeteredProfile, MeteredSubscription};
mod lint;
pub mod locate;
pub mod range;
mod raw;
pub mod secret;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use secret::{Secret, Secrets};

use crate::event::{EventPattern, NewDelivery, Priority};
use crate::format::Format;
use crate::route::{Template, TopicFilter};
use crate::sign::Scheme;

pub const DEFAULT_PATH: &str = "/etc/fleethook/fleethook.toml";
pub const DEFAULT_SOCKET: &str = "/run/fleethook/status.sock";
pub const DEFAULT_RETRY: [u64; 10] = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800];

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub source: PathBuf,
    pub device_id: String,
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub status: StatusConfig,
    pub heartbeat: HeartbeatConfig,
    pub metrics: MetricsConfig,
    pub ros: RosConfig,
    pub delivery: DeliveryConfig,
    pub link: LinkConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(rename = "subscription")]
    pub subscriptions: Vec<Subscription>,
    /// What loads but probably does not do what was meant (`check` prints these, the
    /// agent logs them at start).
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
    /// What `check` loads with a warning but the agent refuses ([`Config::load`]):
    /// secrets written as `check` prints them (`<redacted sha256:…>`), and the
    /// documentation's example secret on an enabled subscription.
    #[serde(skip)]
    pub refused_by_run: Vec<ConfigError>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MqttConfig {
    /// The broker URL without credentials.
    pub url: String,
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub port: u16,
    #[serde(skip)]
    pub tls: bool,
    pub client_id: String,
    pub username: Option<String>,
    /// Read from `password_file`, which `check` prints in its place.
    #[serde(rename = "password_file", serialize_with = "ser_origin")]
    pub password: Option<Secret>,
    #[serde(serialize_with = "ser_duration")]
    pub keep_alive: Duration,
    pub ca_file: Option<PathBuf>,
    /// A client certificate for a broker that requires one (mTLS): PEM files.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Larger payloads are quarantined, not queued.
    #[serde(serialize_with = "ser_size")]
    pub max_payload: u64,
    /// The protocol: 3 (MQTT 3.1.1, also written `version = 4`, its protocol level) or 5.
    pub version: u8,
    /// How many QoS 1 messages the broker sends before it waits for our acks: mosquitto's
    /// `max_inflight_messages` (20 by default) for MQTT 3.1.1; with MQTT 5, our own
    /// Receive Maximum unless set lower. The fast path never holds so many unacked that
    /// the broker's flow to us stops (docs/decisions.md, "Holding the ack").
    pub broker_max_inflight: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    DropOldest,
    Backpressure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Clone, Debug, Serialize)]
pub struct StorageConfig {
    pub path: PathBuf,
    #[serde(serialize_with = "ser_size")]
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub synchronous: Synchronous,
    pub audit_per_subscription: u64,
    /// How long an event may be attempted from memory before it must be stored (the
    /// fast path: docs/decisions.md, "The fast path"); zero stores every event before its ack.
    #[serde(serialize_with = "ser_duration")]
    pub write_behind: Duration,
}

#[cfg(test)]
impl StorageConfig {
    /// An outbox at `path` with room to spare, for unit tests.
    pub fn for_tests(path: PathBuf) -> StorageConfig {
        StorageConfig {
            path,
            max_bytes: 1 << 30,
            when_full: WhenFull::DropOldest,
            synchronous: Synchronous::Normal,
            audit_per_subscription: 1000,
            write_behind: Duration::from_millis(100),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; off when absent.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[ros]`: what `payload = "ros"` routes need beside the bridge's type topics.
#[derive(Clone, Debug, Serialize)]
pub struct RosConfig {
    /// Where ROS 2 `.msg` files are found, as `<dir>/<pkg>/msg/<Type>.msg` (ROS 2
    /// bridges announce a type's name only). By default every `/opt/ros/*/share`.
    pub msg_path: Vec<PathBuf>,
    /// How long a message waits, unacked, for its topic's type before it is quarantined.
    #[serde(serialize_with = "ser_duration")]
    pub type_wait: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusConfig {
    pub socket: PathBuf,
    /// Who may connect at all (state changes also need the agent's user or group).
    #[serde(serialize_with = "ser_mode")]
    pub socket_mode: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct HeartbeatConfig {
    /// Zero turns the heartbeat off.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeliveryConfig {
    pub max_in_flight: usize,
    #[serde(serialize_with = "ser_duration")]
    pub offline_probe_max: Duration,
    /// How long SIGTERM waits for in-flight requests before abandoning them.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Every subscription's proxy unless it names its own.
    #[serde(serialize_with = "ser_proxy", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// Hosts reached without the proxy (`localhost,10.0.0.0/8,.internal`).
    pub no_proxy: Option<String>,
}

/// A `proxy` setting. Without one, reqwest's reading of `HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY` and `NO_PROXY` applies; with one, the environment is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// `"none"`: straight to the endpoint, whatever the environment says.
    Direct,
    /// Through this proxy (http, https, socks5 or socks5h); credentials in the URL are
    /// hidden from `Debug` and left out of `check`'s print.
    Via(FullUrl),
}

fn ser_proxy<S: Serializer>(proxy: &Option<Proxy>, s: S) -> Result<S::Ok, S::Error> {
    match proxy {
        None => s.serialize_none(),
        Some(Proxy::Direct) => s.serialize_str("none"),
        Some(Proxy::Via(url)) => s.serialize_str(&build::without_credentials(&url.0)),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteConfig {
    pub topic: TopicFilter,
    pub event: Template,
    pub device_id: Option<Template>,
    pub dedupe: Option<String>,
    pub priority: Priority,
    #[serde(serialize_with = "ser_opt_duration")]
    pub ttl: Option<Duration>,
    pub collapse: bool,
    pub retained: Retained,
    /// How its messages are encoded (see `ingest::payload`).
    pub payload: PayloadFormat,
}

/// A route's `retained`: what to do with a message the broker marks retained (it resends
/// the topic's last retained message on every subscribe, so at every start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retained {
    /// Take a retained payload once per topic, across restarts (by content hash).
    Once,
    /// Take every retained copy as a new event.
    Always,
    /// Drop retained copies; only live messages become events.
    Ignore,
}

/// A subscription's `compression`: how request bodies are encoded (`delivery::compress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The config's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A route's `payload`: how its messages are encoded (decoded by `ingest::payload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Json,
    Msgpack,
    Cbor,
    Text,
    Binary,
    Auto,
    /// ika mqtt_client's serialized ROS 1 or ROS 2 messages (`ingest::ros`).
    Ros,
}

impl PayloadFormat {
    pub fn parse(s: &str) -> Result<PayloadFormat, String> {
        Ok(match s {
            "json" => PayloadFormat::Json,
            "msgpack" => PayloadFormat::Msgpack,
            "cbor" => PayloadFormat::Cbor,
            "text" => PayloadFormat::Text,
            "binary" => PayloadFormat::Binary,
            "auto" => PayloadFormat::Auto,
            "ros" => PayloadFormat::Ros,
            o => return Err(format!("`{o}` is not json, msgpack, cbor, text, binary, auto or ros")),
        })
    }
}

/// `clock_policy`: when deliveries signed with a timestamp (`standard`, `stripe`) wait,
/// pending and without spending retries, for the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockPolicy {
    /// While the clock is `wrong` (before this binary was built) or `syncing` (a time
    /// service is at work on it). While it is `unsynced` with no time service, waiting
    /// could be forever: they go, and a receiver's refusal of the timestamp is retried.
    Wait,
    /// While it is `wrong` or `unsynced`: for robots whose kernel reliably knows (NTP).
    Strict,
    /// Never.
    Sign,
}

impl ClockPolicy {
    /// Whether a clock of this quality holds deliveries.
    pub fn holds(self, quality: crate::clock::Quality) -> bool {
        use crate::clock::Quality;
        match self {
            ClockPolicy::Wait => matches!(quality, Quality::Wrong | Quality::Syncing),
            ClockPolicy::Strict => quality != Quality::Synced,
            ClockPolicy::Sign => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    Parallel,
    Fifo,
}

/// A token bucket: `per_second` tokens a second, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Subscription {
    pub name: String,
    /// Without credentials; see `url_full` for the one requests go to.
    pub url: String,
    #[serde(skip)]
    pub url_full: FullUrl,
    pub events: Vec<EventPattern>,
    #[serde(flatten)]
    pub secrets: Secrets,
    /// The HMAC keys the secrets stand for under `signature`.
    #[serde(skip)]
    pub keys: SigningKeys,
    pub signature: Scheme,
    /// What a signature with a timestamp does while the wall clock is not known good.
    pub clock_policy: ClockPolicy,
    pub header_prefix: String,
    pub format: Format,
    #[serde(serialize_with = "ser_durations")]
    pub retry: Vec<Duration>,
    pub method: String,
    #[serde(serialize_with = "ser_headers", skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, HeaderValue)>,
    pub ordering: Ordering,
    pub max_in_flight: usize,
    #[serde(serialize_with = "ser_rate")]
    pub rate_limit: Option<RateLimit>,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_age: Duration,
    pub allow_http: bool,
    pub ca_file: Option<PathBuf>,
    /// A client certificate for endpoints that require one (mTLS): PEM files, read
    /// when the HTTP client is built (start and reload).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Request bodies compressed with `Content-Encoding`; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Several envelopes per request; None: one event per request.
    pub batch: Option<Batch>,
    /// Request bytes per second to this endpoint; None: no cap of its own.
    #[serde(serialize_with = "build::link::ser_byte_rate")]
    pub max_rate: Option<u64>,
    /// Request bytes per rolling 24 h past which only high-priority events go.
    #[serde(serialize_with = "build::link::ser_opt_size")]
    pub daily_budget: Option<u64>,
    /// What replaces the above (and batch sizes) while the link is metered.
    pub metered: Option<MeteredSubscription>,
    pub summary: Option<String>,
    pub enabled: bool,
    pub routing_key: Option<Secret>,
    pub api_key: Option<Secret>,
    /// Its own `proxy`, else `[delivery] proxy`.
    #[serde(serialize_with = "ser_proxy", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// `[delivery] no_proxy`, for its HTTP client.
    #[serde(skip)]
    pub no_proxy: Option<String>,
    /// `auth`: a bearer token from a file, or OAuth2 client credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

impl Subscription {
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled && self.events.iter().any(|p| p.matches(event_type))
    }
}

/// A subscription's URL with any credentials in it; `Debug` hides them.
#[derive(Clone, PartialEq, Eq)]
pub struct FullUrl(pub reqwest::Url);

impl fmt::Debug for FullUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", build::without_credentials(&self.0))
    }
}

/// The HMAC keys the secrets stand for; `Debug` shows only how many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SigningKeys(pub Vec<Vec<u8>>);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys(<{} redacted>)", self.0.len())
    }
}

/// A custom header's value; ones that look like credentials are kept as secrets.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Plain(String),
    Secret(Secret),
}

impl HeaderValue {
    pub fn expose(&self) -> &str {
        match self {
            HeaderValue::Plain(s) => s,
            HeaderValue::Secret(s) => s.expose(),
        }
    }
}

/// One thing wrong with the config, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file, self.line, self.key, self.message)
    }
}

/// Everything wrong with a config file, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    /// The config the agent runs with: a redacted secret is an error.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let config = Config::load_for_check(path)?;
        if !config.refused_by_run.is_empty() {
            return Err(ConfigErrors(config.refused_by_run).into());
        }
        Ok(config)
    }

    /// The config as `check` reads it: redacted secrets are only warnings, so what
    /// `check` prints loads back.
    pub fn load_for_check(path: &Path) -> anyhow::Result<Config> {
        let src =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        Ok(Config::parse(&src, path)?)
    }

    /// Validates config text; `path` is only used to name the file in errors.
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
        build::parse(src, path)
    }

    /// The resolved config as TOML, secrets replaced by fingerprints (or by where they
    /// are read from). It loads back: `check` prints it again unchanged.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn subscription(&self, name: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// The deliveries an event of this type gets, with their expiry.
    pub fn deliveries(&self, event_type: &str, ttl: Option<Duration>, now_ms: i64) -> Vec<NewDelivery> {
        deliveries(&self.subscriptions, event_type, ttl, now_ms)
    }
}

/// Subscription matching: one delivery per subscription that wants `event_type`, expiring
/// after the route's `ttl` if it has one, else the subscription's `max_age`.
pub fn deliveries(
    subscriptions: &[Subscription],
    event_type: &str,
    ttl: Option<Duration>,
    now_ms: i64,
) -> Vec<NewDelivery> {
    subscriptions
        .iter()
        .filter(|s| s.wants(event_type))
        .map(|s| NewDelivery {
            id: crate::event::new_id(),
            subscription: s.name.clone(),
            expires_ms: now_ms.saturating_add(ttl.unwrap_or(s.max_age).as_millis() as i64),
        })
        .collect()
}

fn ser_mode<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Sizes as the config writes them (`"256KiB"`), exact.
fn ser_size<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&size_text(*n))
}

/// A size as the config writes it, exact: `"256KiB"`, `"1000B"`.
fn size_text(n: u64) -> String {
    let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    units
        .iter()
        .find(|(unit, _)| n >= *unit && n % unit == 0)
        .map_or_else(|| format!("{n}B"), |(unit, name)| format!("{}{name}", n / unit))
}

fn ser_rate<S: Serializer>(rate: &Option<RateLimit>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) => s.serialize_str(&format!("{}/s", r.per_second)),
        None => s.serialize_none(),
    }
}

/// Headers as the table the config writes (`headers = { X-Team = "robotics" }`).
fn ser_headers<S: Serializer>(headers: &[(String, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(headers.iter().map(|(name, value)| (name, value)))
}

/// A secret read from a file, as the path it was read from.
fn ser_origin<S: Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match secret.as_ref().and_then(|sec| sec.origin()) {
        Some((_, name)) => s.serialize_str(name),
        None => s.serialize_none(),
    }
}

fn ser_durations<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().map(|d| humantime::format_duration(*d).to_string()))
}

#[cfg(test)]
mod tests {
    use super::ClockPolicy;
    use crate::clock::Quality::*;

    #[test]
    fn wait_holds_for_a_clock_that_is_wrong_or_about_to_be_set() {
        let holding = |p: ClockPolicy| [Synced, Unsynced, Syncing, Wrong].map(|q| p.holds(q));
        assert_eq!(holding(ClockPolicy::Wait), [false, false, true, true]);
        assert_eq!(holding(ClockPolicy::Strict), [false, true, true, true]);
        assert_eq!(holding(ClockPolicy::Sign), [false; 4]);
    }
}

//! Turns the raw file into the typed [`Config`], collecting every problem with its key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::locate::{self, KeyPath};
use super::range::{self, duration_in, size_in};
use super::raw::{OneOrMany, RawConfig, RawRoute, RawSubscription};
use super::secret::{self, SecretSource};
use super::*;

pub mod auth;
pub mod batch;
pub mod link;
mod subscription;

use subscription::{build_subscriptions, client_identity};

/// Problems found so far, each with the key it belongs to: errors, and what `check`
/// only warns about but the agent refuses to start with.
#[derive(Default)]
struct Issues(Vec<(KeyPath, String)>, Vec<(KeyPath, String)>);

impl Issues {
    /// A secret written as `check` prints it, redacted: it loads (so the printed config
    /// reads back), and the agent refuses to start with it.
    fn redacted(&mut self, path: KeyPath, secret: &Secret) -> bool {
        if secret.is_redacted() {
            self.1.push((path, REDACTED.to_string()));
        }
        secret.is_redacted()
    }

    /// Something the agent must not run with, though `check` loads it (with a warning).
    fn refused_by_run(&mut self, path: KeyPath, message: impl Into<String>) {
        self.1.push((path, message.into()));
    }

    fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push((path, message.into()));
    }

    /// Keeps `Ok` values, records `Err` ones under `path`.
    fn take<T>(&mut self, path: KeyPath, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(path, e)).ok()
    }
}

pub(super) fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let located = |line: usize, key: String, message: String| ConfigError { file: file.clone(), line, key, message };
    let doc = DeTable::parse(src).map_err(|e| {
        let line = e.span().map(|s| locate::line_of(src, s.start)).unwrap_or(1);
        ConfigErrors(vec![located(line, "(syntax)".into(), e.message().trim().to_string())])
    })?;
    let raw: RawConfig = toml::from_str(src).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let key = locate::path_at(&doc, offset);
        ConfigErrors(vec![located(locate::line_of(src, offset), key.to_string(), e.message().trim().to_string())])
    })?;
    let mut issues = Issues::default();
    let mut config = build(raw, path, &mut issues);
    if issues.0.is_empty() {
        let locate = |(key, message): (KeyPath, String)| {
            let line = locate::span_of(&doc, &key).map(|s| locate::line_of(src, s.start)).unwrap_or(1);
            located(line, key.to_string(), message)
        };
        config.refused_by_run = std::mem::take(&mut issues.1).into_iter().map(locate).collect();
        config.warnings = config.refused_by_run.clone();
        config.warnings.extend(super::lint::warnings(&config).into_iter().map(locate));
        return Ok(config);
    }
    let mut errors: Vec<ConfigError> = issues
        .0
        .into_iter()
        .map(|(key, message)| {
            let line = locate::span_of(&doc, &key).map(|s| locate::line_of(src, s.start)).unwrap_or(1);
            located(line, key.to_string(), message)
        })
        .collect();
    errors.sort_by_key(|e| e.line);
    Err(ConfigErrors(errors))
}

const REDACTED: &str =
    "a redacted secret, as `fleethook check` prints it: put the real one back (the agent will not start with it)";

/// A count from the file, within its range; the default when absent or refused.
fn count(issues: &mut Issues, path: KeyPath, v: Option<u64>, limits: (u64, u64), default: u64) -> u64 {
    match v {
        Some(n) => issues.take(path, range::count_in(n, limits)).unwrap_or(default),
        None => default,
    }
}

fn opt<T>(
    issues: &mut Issues,
    path: KeyPath,
    v: Option<&String>,
    f: impl Fn(&str) -> Result<T, String>,
    default: T,
) -> T {
    match v {
        Some(s) => issues.take(path, f(s)).unwrap_or(default),
        None => default,
    }
}

fn default_device_id() -> String {
    if let Ok(id) = std::env::var("FLEETHOOK_DEVICE_ID")
        && !id.trim().is_empty()
    {
        return id.trim().to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits, and the last byte stays 0 when it does not.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name = if rc == 0 {
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned()
    } else {
        String::new()
    };
    if name.trim().is_empty() { "unknown-device".to_string() } else { name.trim().to_string() }
}

/// The URL with any user and password removed, for display.
pub fn without_credentials(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn build(raw: RawConfig, source: &Path, issues: &mut Issues) -> Config {
    let root = KeyPath::root();
    let device_id = match raw.device_id {
        Some(d) if d.trim().is_empty() => {
            issues.push(root.key("device_id"), "device_id is empty");
            d
        }
        Some(d) => d,
        None => default_device_id(),
    };
    let mqtt = build_mqtt(&raw.mqtt, &device_id, issues);
    let storage = build_storage(&raw.storage, root.key("storage"), issues);
    let status = build_status(&raw.status, root.key("status"), issues);
    let heartbeat = HeartbeatConfig {
        interval: opt(
            issues,
            root.key("heartbeat").key("interval"),
            raw.heartbeat.interval.as_ref(),
            range::heartbeat,
            Duration::from_secs(60),
        ),
    };
    let metrics = MetricsConfig {
        listen: raw.metrics.listen.as_ref().and_then(|l| {
            let parsed = l.parse().map_err(|_| format!("`{l}` is not an address and port like \"127.0.0.1:9464\""));
            issues.take(root.key("metrics").key("listen"), parsed)
        }),
    };
    let ros = RosConfig {
        msg_path: match &raw.ros.msg_path {
            Some(dirs) => dirs.iter().map(PathBuf::from).collect(),
            None => default_ros_msg_path(),
        },
        type_wait: opt(
            issues,
            root.key("ros").key("type_wait"),
            raw.ros.type_wait.as_ref(),
            duration_in(range::TYPE_WAIT),
            Duration::from_secs(10),
        ),
    };
    let delivery = build_delivery(&raw.delivery, root.key("delivery"), issues);
    let link = link::build(&raw.link, root.key("link"), issues);
    let routes =
        raw.routes.iter().enumerate().filter_map(|(i, r)| build_route(r, root.key("route").index(i), issues)).collect();
    let mut subscriptions = build_subscriptions(raw.subscriptions, &root, issues);
    for sub in &mut subscriptions {
        if sub.proxy.is_none() {
            sub.proxy = delivery.proxy.clone();
        }
        sub.no_proxy = delivery.no_proxy.clone();
    }
    Config {
        source: source.to_path_buf(),
        device_id,
        mqtt,
        storage,
        status,
        heartbeat,
        metrics,
        ros,
        delivery,
        link,
        routes,
        subscriptions,
        warnings: Vec::new(),
        refused_by_run: Vec::new(),
    }
}

/// `storage.write_behind` by default: an endpoint 50–500 ms away over WiFi or LTE, with a
/// fresh TLS handshake, answers within it; anything slower is stored before its ack
/// (docs/decisions.md: "Holding the ack").
const WRITE_BEHIND: Duration = Duration::from_secs(3);

fn build_storage(raw: &super::raw::RawStorage, sp: KeyPath, issues: &mut Issues) -> StorageConfig {
    let path = PathBuf::from(raw.path.clone().unwrap_or_else(|| "/var/lib/fleethook/outbox.db".into()));
    if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
        issues.push(
            sp.key("path"),
            format!("`{}` is a directory: name the outbox file in it (e.g. outbox.db)", path.display()),
        );
    }
    StorageConfig {
        path,
        max_bytes: opt(issues, sp.key("max_bytes"), raw.max_bytes.as_ref(), size_in(range::MAX_BYTES), 256 << 20),
        when_full: opt(
            issues,
            sp.key("when_full"),
            raw.when_full.as_ref(),
            |s| match s {
                "drop_oldest" => Ok(WhenFull::DropOldest),
                "backpressure" => Ok(WhenFull::Backpressure),
                o => Err(format!("`{o}` is not drop_oldest or backpressure")),
            },
            WhenFull::DropOldest,
        ),
        synchronous: opt(
            issues,
            sp.key("synchronous"),
            raw.synchronous.as_ref(),
            |s| match s {
                "full" => Ok(Synchronous::Full),
                "normal" => Ok(Synchronous::Normal),
                o => Err(format!("`{o}` is not full or normal")),
            },
            Synchronous::Full,
        ),
        audit_per_subscription: count(
            issues,
            sp.key("audit_per_subscription"),
            raw.audit_per_subscription,
            range::AUDIT_ROWS,
            1000,
        ),
        write_behind: opt(
            issues,
            sp.key("write_behind"),
            raw.write_behind.as_ref(),
            duration_in(range::WRITE_BEHIND),
            WRITE_BEHIND,
        ),
    }
}

/// `ros.msg_path` by default: every `/opt/ros/<distro>/share` there is. It lives with the
/// config, which stays below the parts it configures.
fn default_ros_msg_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/opt/ros")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("share")).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The longest path a Unix socket can bind (`sun_path` is 108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;

fn build_status(raw: &super::raw::RawStatus, p: KeyPath, issues: &mut Issues) -> StatusConfig {
    let socket = PathBuf::from(raw.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()));
    let len = socket.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        issues.push(
            p.key("socket"),
            format!("the path is {len} bytes; a Unix socket path has at most {SOCKET_PATH_MAX}: choose a shorter one"),
        );
    }
    StatusConfig {
        socket,
        socket_mode: opt(
            issues,
            p.key("socket_mode"),
            raw.socket_mode.as_ref(),
            |m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("`{m}` is not an octal file mode like \"0660\""))
            },
            0o660,
        ),
    }
}

fn build_delivery(raw: &super::raw::RawDelivery, dp: KeyPath, issues: &mut Issues) -> DeliveryConfig {
    DeliveryConfig {
        max_in_flight: count(issues, dp.key("max_in_flight"), raw.max_in_flight, range::GLOBAL_IN_FLIGHT, 32) as usize,
        offline_probe_max: opt(
            issues,
            dp.key("offline_probe_max"),
            raw.offline_probe_max.as_ref(),
            duration_in(range::PROBE_MAX),
            // 1000 robots probing one endpoint every 5 s: about 200 connections a second
            // (docs/decisions.md, "A fleet comes back").
            Duration::from_secs(5),
        ),
        shutdown_grace: opt(
            issues,
            dp.key("shutdown_grace"),
            raw.shutdown_grace.as_ref(),
            duration_in(range::SHUTDOWN_GRACE),
            Duration::from_secs(10),
        ),
        proxy: raw.proxy.as_ref().and_then(|p| issues.take(dp.key("proxy"), parse_proxy(p))),
        no_proxy: raw.no_proxy.clone(),
    }
}

/// `"none"`, or a proxy URL: http://, https://, socks5:// or socks5h://.
fn parse_proxy(p: &str) -> Result<Proxy, String> {
    if p == "none" {
        return Ok(Proxy::Direct);
    }
    let url = reqwest::Url::parse(p)
        .map_err(|e| format!("`{p}` is not a URL ({e}); use e.g. \"http://proxy:3128\" or \"none\""))?;
    match url.scheme() {
        "http" | "https" | "socks5" | "socks5h" if url.host_str().is_some() => Ok(Proxy::Via(FullUrl(url))),
        _ => Err(format!(
            "`{}` is not an http://, https://, socks5:// or socks5h:// proxy with a host (or \"none\")",
            without_credentials(&url)
        )),
    }
}

fn build_mqtt(raw: &super::raw::RawMqtt, device_id: &str, issues: &mut Issues) -> MqttConfig {
    let p = KeyPath::root().key("mqtt");
    let url_s = raw.url.clone().unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let (mut host, mut port, mut tls, mut shown) = ("127.0.0.1".to_string(), 1883, false, url_s.clone());
    match reqwest::Url::parse(&url_s) {
        Ok(u) if u.scheme() == "mqtt" || u.scheme() == "mqtts" => {
            tls = u.scheme() == "mqtts";
            host = u.host_str().unwrap_or("").trim_matches(['[', ']']).to_string();
            port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
            shown = without_credentials(&u);
            if host.is_empty() {
                issues.push(p.key("url"), format!("`{url_s}` has no host"));
            }
            if !u.username().is_empty() {
                issues.push(
                    p.key("url"),
                    "put the user in mqtt.username and the password in mqtt.password_file, not in the URL",
                );
            }
        }
        Ok(u) => issues.push(p.key("url"), format!("scheme `{}` is not mqtt:// or mqtts://", u.scheme())),
        Err(e) => issues
            .push(p.key("url"), format!("`{url_s}` is not a URL ({e}); use mqtt://host:port or mqtts://host:port")),
    }
    let (client_cert, client_key) = client_identity(&raw.client_cert, &raw.client_key, &p, issues);
    if client_cert.is_some() && !tls {
        issues.push(p.key("client_cert"), "a client certificate needs TLS: use an mqtts:// URL");
    } else if client_cert.is_some() && raw.ca_file.is_none() {
        issues.push(
            p.key("client_cert"),
            "a client certificate needs mqtt.ca_file too: the CA of the broker (for a public CA, its root PEM)",
        );
    }
    let version = match raw.version {
        None | Some(3) | Some(4) => 3,
        Some(5) => 5,
        Some(v) => {
            issues.push(p.key("version"), format!("{v} is not an MQTT version: 3 (3.1.1, the default) or 5"));
            3
        }
    };
    let password = raw
        .password_file
        .as_ref()
        .and_then(|f| issues.take(p.key("password_file"), secret::load(SecretSource::File, f)));
    MqttConfig {
        url: shown,
        host,
        port,
        tls,
        client_id: raw.client_id.clone().unwrap_or_else(|| format!("fleethook-{device_id}")),
        username: raw.username.clone(),
        password,
        keep_alive: opt(
            issues,
            p.key("keep_alive"),
            raw.keep_alive.as_ref(),
            duration_in(range::KEEP_ALIVE),
            Duration::from_secs(30),
        ),
        ca_file: raw.ca_file.as_ref().map(PathBuf::from),
        client_cert,
        client_key,
        max_payload: opt(
            issues,
            p.key("max_payload"),
            raw.max_payload.as_ref(),
            size_in(range::MAX_PAYLOAD),
            256 * 1024,
        ),
        version,
        broker_max_inflight: count(
            issues,
            p.key("broker_max_inflight"),
            raw.broker_max_inflight,
            range::BROKER_INFLIGHT,
            // v5: the Receive Maximum ingest announces (its HELD_MAX); v3: mosquitto's default.
            if version == 5 { 4096 } else { 20 },
        ),
    }
}

fn build_route(r: &RawRoute, p: KeyPath, issues: &mut Issues) -> Option<RouteConfig> {
    let topic = issues.take(p.key("topic"), TopicFilter::parse(&r.topic))?;
    let event = issues.take(p.key("event"), Template::parse(&r.event, &topic));
    let device_id = r.device_id.as_ref().and_then(|d| issues.take(p.key("device_id"), Template::parse(d, &topic)));
    if let Some(d) = &r.dedupe
        && !d.starts_with('/')
    {
        issues.push(p.key("dedupe"), format!("`{d}` is not a JSON pointer (it starts with /)"));
    }
    let priority = opt(issues, p.key("priority"), r.priority.as_ref(), Priority::parse, Priority::Normal);
    let ttl = r.ttl.as_ref().and_then(|t| issues.take(p.key("ttl"), duration_in(range::AGE)(t)));
    Some(RouteConfig {
        topic,
        event: event?,
        device_id,
        dedupe: r.dedupe.clone(),
        priority,
        ttl,
        collapse: r.collapse.unwrap_or(false),
        retained: opt(
            issues,
            p.key("retained"),
            r.retained.as_ref(),
            |v| match v {
                "once" => Ok(Retained::Once),
                "always" => Ok(Retained::Always),
                "ignore" => Ok(Retained::Ignore),
                o => Err(format!("`{o}` is not once, always or ignore")),
            },
            Retained::Once,
        ),
        payload: opt(issues, p.key("payload"), r.payload.as_ref(), PayloadFormat::parse, PayloadFormat::Json),
    })
}

#[cfg(test)]
mod range_tests;
#[cfg(test)]
mod tests;

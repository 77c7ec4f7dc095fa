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

/// Problems found so far, each with the key it belongs to.
#[derive(Default)]
struct Issues(Vec<(KeyPath, String)>, Vec<KeyPath>);

impl Issues {
    /// A secret written as `check` prints it, redacted: it loads (so the printed config
    /// reads back), and the agent refuses to start with it.
    fn redacted(&mut self, path: KeyPath, secret: &Secret) -> bool {
        if secret.is_redacted() {
            self.1.push(path);
        }
        secret.is_redacted()
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
        config.redacted =
            std::mem::take(&mut issues.1).into_iter().map(|key| (key, REDACTED.to_string())).map(locate).collect();
        config.warnings = config.redacted.clone();
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
        redacted: Vec::new(),
    }
}

/// `storage.write_behind` by default: a healthy endpoint on a LAN or LTE answers well
/// within it; anything slower is stored first (docs/decisions.md: "The fast path").
const WRITE_BEHIND: Duration = Duration::from_millis(100);

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
            Duration::from_secs(60),
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

fn build_subscriptions(raw: Vec<RawSubscription>, root: &KeyPath, issues: &mut Issues) -> Vec<Subscription> {
    let mut names = HashSet::new();
    let mut subscriptions = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let p = root.key("subscription").index(i);
        if !names.insert(s.name.clone()) {
            issues.push(p.key("name"), format!("subscription name `{}` is used twice", s.name));
        }
        if let Some(sub) = build_subscription(s, p, issues) {
            subscriptions.push(sub);
        }
    }
    subscriptions
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
        version: match raw.version {
            None | Some(3) | Some(4) => 3,
            Some(5) => 5,
            Some(v) => {
                issues.push(p.key("version"), format!("{v} is not an MQTT version: 3 (3.1.1, the default) or 5"));
                3
            }
        },
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

fn looks_secret(header: &str) -> bool {
    let h = header.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "cookie", "password"].iter().any(|w| h.contains(w))
}

fn build_subscription(mut s: RawSubscription, p: KeyPath, issues: &mut Issues) -> Option<Subscription> {
    if s.name.trim().is_empty() || s.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        issues.push(p.key("name"), "a subscription name is one word with no spaces");
    }
    let format = opt(issues, p.key("format"), s.format.as_ref(), Format::parse, Format::Envelope);
    // Service formats (Slack, PagerDuty, Datadog) authenticate by URL or key, not HMAC.
    let default_scheme = if format == Format::Envelope { Scheme::Standard } else { Scheme::None };
    let signature = opt(issues, p.key("signature"), s.signature.as_ref(), Scheme::parse, default_scheme);
    let allow_http = s.allow_http.unwrap_or(false);
    let url = subscription_url(&s.url, allow_http, &p, issues);

    let clock_policy = opt(
        issues,
        p.key("clock_policy"),
        s.clock_policy.as_ref(),
        |v| match v {
            "wait" => Ok(ClockPolicy::Wait),
            "strict" => Ok(ClockPolicy::Strict),
            "sign" => Ok(ClockPolicy::Sign),
            o => Err(format!("`{o}` is not wait, strict or sign")),
        },
        ClockPolicy::Wait,
    );
    let (secrets, keys) = subscription_secrets(&mut s, signature, &p, issues);
    let events = match &s.events {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, e)| issues.take(p.key("events").index(i), EventPattern::parse(e)))
            .collect(),
        None => vec![EventPattern::parse("*").expect("`*` is a valid pattern")],
    };
    let retry = match &s.retry {
        Some(list) if list.len() > range::RETRY_COUNT => {
            issues.push(p.key("retry"), format!("lists {} delays; at most {}", list.len(), range::RETRY_COUNT));
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| issues.take(p.key("retry").index(i), duration_in(range::RETRY_DELAY)(d)))
            .collect(),
        None => DEFAULT_RETRY.iter().map(|s| Duration::from_secs(*s)).collect(),
    };
    let method = s.method.clone().unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
    if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
        issues.push(p.key("method"), format!("`{method}` is not POST, PUT or PATCH"));
    }
    let header_prefix = s.header_prefix.clone().unwrap_or_else(|| "X-Fleethook".into());
    if http::HeaderName::from_bytes(format!("{header_prefix}-Event").as_bytes()).is_err() {
        issues.push(p.key("header_prefix"), format!("`{header_prefix}` cannot start a header name"));
    }
    let headers = subscription_headers(s.headers.clone().unwrap_or_default(), &p, issues);
    let (client_cert, client_key) = client_identity(&s.client_cert, &s.client_key, &p, issues);
    let compression = s.compression.as_deref().and_then(|c| {
        let parsed = match c {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            o => Err(format!("`{o}` is not gzip or zstd")),
        };
        issues.take(p.key("compression"), parsed)
    });
    if compression.is_some() && format != Format::Envelope {
        issues.push(
            p.key("compression"),
            format!(
                "compression is for format = \"envelope\" endpoints; {} takes plain JSON",
                format!("{format:?}").to_lowercase()
            ),
        );
    }
    let batch = s.batch.as_ref().and_then(|b| batch::build(b, format, &p, issues, None));
    let (max_rate, daily_budget, metered) = link::subscription(&s, format, batch.as_ref(), &p, issues);
    let auth = s.auth.as_ref().and_then(|a| auth::build(a, s.allow_http.unwrap_or(false), &p, issues));
    if auth.is_some() && headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
        issues.push(p.key("auth"), "auth and an Authorization header both say how to authenticate; keep one");
    }
    let ordering = opt(
        issues,
        p.key("ordering"),
        s.ordering.as_ref(),
        |o| match o {
            "parallel" => Ok(Ordering::Parallel),
            "fifo" => Ok(Ordering::Fifo),
            o => Err(format!("`{o}` is not parallel or fifo")),
        },
        Ordering::Parallel,
    );
    let max_in_flight =
        count(issues, p.key("max_in_flight"), s.max_in_flight, range::SUBSCRIPTION_IN_FLIGHT, 8) as usize;
    let rate_limit = s.rate_limit.as_ref().and_then(|r| issues.take(p.key("rate_limit"), range::parse_rate(r)));
    let routing_key = s.routing_key.clone().map(Secret::new);
    let api_key = s.api_key.clone().map(Secret::new);
    for (key, secret) in [("routing_key", &routing_key), ("api_key", &api_key)] {
        if let Some(secret) = secret {
            issues.redacted(p.key(key), secret);
        }
    }
    if format == Format::Pagerduty && routing_key.is_none() {
        issues.push(p.key("routing_key"), "format = \"pagerduty\" needs routing_key (the integration key)");
    }
    if format == Format::Datadog && api_key.is_none() {
        issues.push(p.key("api_key"), "format = \"datadog\" needs api_key");
    }
    let url = url?;
    Some(Subscription {
        url: without_credentials(&url),
        url_full: FullUrl(url),
        events,
        secrets,
        keys: SigningKeys(keys),
        signature,
        clock_policy,
        header_prefix,
        format,
        retry,
        method,
        headers,
        ordering,
        max_in_flight,
        rate_limit,
        timeout: opt(
            issues,
            p.key("timeout"),
            s.timeout.as_ref(),
            duration_in(range::TIMEOUT),
            Duration::from_secs(15),
        ),
        connect_timeout: opt(
            issues,
            p.key("connect_timeout"),
            s.connect_timeout.as_ref(),
            duration_in(range::CONNECT_TIMEOUT),
            Duration::from_secs(5),
        ),
        max_age: opt(
            issues,
            p.key("max_age"),
            s.max_age.as_ref(),
            duration_in(range::AGE),
            Duration::from_secs(72 * 3600),
        ),
        allow_http,
        ca_file: s.ca_file.as_ref().map(PathBuf::from),
        client_cert,
        client_key,
        compression,
        batch,
        max_rate,
        daily_budget,
        metered,
        summary: s.summary.clone(),
        enabled: s.enabled.unwrap_or(true),
        routing_key,
        api_key,
        proxy: s.proxy.as_ref().and_then(|x| issues.take(p.key("proxy"), parse_proxy(x))),
        no_proxy: None,
        auth,
        name: s.name,
    })
}

/// `client_cert` and `client_key`: both or neither.
fn client_identity(
    cert: &Option<String>,
    key: &Option<String>,
    p: &KeyPath,
    issues: &mut Issues,
) -> (Option<PathBuf>, Option<PathBuf>) {
    match (cert, key) {
        (Some(c), Some(k)) => (Some(PathBuf::from(c)), Some(PathBuf::from(k))),
        (Some(_), None) => {
            issues.push(p.key("client_key"), "client_cert is set but client_key is not: set both (PEM files)");
            (None, None)
        }
        (None, Some(_)) => {
            issues.push(p.key("client_cert"), "client_key is set but client_cert is not: set both (PEM files)");
            (None, None)
        }
        (None, None) => (None, None),
    }
}

fn subscription_url(url: &str, allow_http: bool, p: &KeyPath, issues: &mut Issues) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && allow_http => Some(u),
        Ok(u) if u.scheme() == "http" => {
            issues.push(p.key("url"), "http:// sends events unencrypted; use https:// or set allow_http = true");
            None
        }
        Ok(u) => {
            issues.push(p.key("url"), format!("scheme `{}` is not https:// (or http:// with allow_http)", u.scheme()));
            None
        }
        Err(e) => {
            issues.push(p.key("url"), format!("`{url}` is not a URL: {e}"));
            None
        }
    }
}

/// The subscription's secrets from all their sources, and the signing keys they stand for.
fn subscription_secrets(
    s: &mut RawSubscription,
    signature: Scheme,
    p: &KeyPath,
    issues: &mut Issues,
) -> (Secrets, Vec<Vec<u8>>) {
    let mut secrets = Vec::new();
    let sources: [(&str, Option<OneOrMany>, SecretSource); 4] = [
        ("secret", s.secret.take(), SecretSource::Inline),
        ("secret_file", s.secret_file.take(), SecretSource::File),
        ("secret_env", s.secret_env.take(), SecretSource::Env),
        ("secret_credential", s.secret_credential.take(), SecretSource::Credential),
    ];
    for (key, value, source) in sources {
        for v in value.map(OneOrMany::into_vec).unwrap_or_default() {
            if let Some(sec) = issues.take(p.key(key), secret::load(source, &v)) {
                secrets.push((key, sec));
            }
        }
    }
    let mut keys = Vec::new();
    for (key, sec) in &secrets {
        if issues.redacted(p.key(key), sec) {
            continue;
        }
        match crate::sign::signing_key(signature, sec.expose()) {
            Ok(k) => keys.push(k),
            Err(e) => issues.push(p.key(key), format!("{e} (signature = \"{signature:?}\")").to_lowercase()),
        }
    }
    if signature != Scheme::None && secrets.is_empty() {
        issues.push(
            p.key("secret"),
            "a signing secret is required (secret, secret_file, secret_env or secret_credential; `fleethook secret` makes one), or set signature = \"none\"",
        );
    }

    (Secrets(secrets.into_iter().map(|(_, s)| s).collect()), keys)
}

/// Custom headers; ones whose name looks like a credential are kept as secrets.
fn subscription_headers(raw: toml::Table, p: &KeyPath, issues: &mut Issues) -> Vec<(String, HeaderValue)> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let hp = p.key("headers").key(&name);
        let Some(value) = value.as_str() else {
            issues.push(hp, "header values are strings");
            continue;
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
            issues.push(hp, "not a valid HTTP header");
            continue;
        }
        let v = if looks_secret(&name) {
            let secret = Secret::new(value);
            issues.redacted(hp, &secret);
            HeaderValue::Secret(secret)
        } else {
            HeaderValue::Plain(value.to_string())
        };
        headers.push((name, v));
    }
    headers
}

#[cfg(test)]
mod range_tests;
#[cfg(test)]
mod tests;

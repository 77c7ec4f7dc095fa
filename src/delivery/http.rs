//! One HTTP attempt: prepare the request (body, headers, fresh signature), send it with
//! the subscription's client, and describe what came back.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::outcome::TransportError;
use crate::config::Subscription;
use crate::event::EnvelopeParts;
use crate::format::{self, FormatOptions};
use crate::outbox::Due;
use crate::sign;
use crate::text::header_value;

/// The response body is read up to this much; the rest is dropped.
pub const BODY_READ_MAX: usize = 64 * 1024;
/// The audit log keeps this much of it.
pub const SNIPPET_MAX: usize = 2 * 1024;

pub const USER_AGENT: &str = concat!("fleethook/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read ca_file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("ca_file {path} holds no usable certificate: {source}")]
    CaCert { path: String, source: reqwest::Error },
    #[error("cannot read the client certificate {path}: {source}")]
    ClientCertFile { path: String, source: std::io::Error },
    #[error(
        "client_cert {cert} and client_key {key} do not make a client identity (PEM certificate and PEM private key): {source}"
    )]
    ClientIdentity { cert: String, key: String, source: reqwest::Error },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// What one subscription sends with: its HTTP client and, with OAuth2, its tokens.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub token: Option<super::token::TokenSource>,
    /// The subscription's `compression` still applies: an endpoint that answers 415 to a
    /// compressed body turns it off until the client is built again (restart, reload).
    pub compress: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where an offline probe connects before it sends anything: the endpoint's host and
    /// port, when no proxy stands between (a proxy accepts whether the endpoint is up).
    pub probe_at: Option<(String, u16)>,
    /// The agent's own header names under the subscription's prefix.
    pub names: std::sync::Arc<Names>,
}

/// `<prefix>-Event` and the others, made once per client: each request used to format
/// and validate them again.
#[derive(Debug)]
pub struct Names {
    event: HeaderName,
    delivery: HeaderName,
    attempt: HeaderName,
    device: HeaderName,
    batch: HeaderName,
    batch_size: HeaderName,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        // The prefix is validated with the config; a name that still does not parse
        // falls back to the default prefix's.
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}-{suffix}").as_bytes())
                .or_else(|_| HeaderName::from_bytes(format!("X-Fleethook-{suffix}").as_bytes()))
                .expect("X-Fleethook-* is a valid header name")
        };
        Names {
            event: name("Event"),
            delivery: name("Delivery"),
            attempt: name("Attempt"),
            device: name("Device"),
            batch: name("Batch"),
            batch_size: name("Batch-Size"),
        }
    }
}

/// The client of one subscription; an OAuth2 token endpoint is reached with the same
/// proxy, CA and client certificate as the endpoint.
pub fn client(sub: &Subscription) -> Result<Client, ClientError> {
    let http = http_client(sub)?;
    let token = match &sub.auth {
        Some(crate::config::Auth::OAuth2(o)) => {
            Some(super::token::TokenSource::new(o.clone(), http.clone(), sub.ca_file.is_some()))
        }
        _ => None,
    };
    let compress = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(sub.compression.is_some()));
    let names = std::sync::Arc::new(Names::new(&sub.header_prefix));
    Ok(Client { http, token, compress, probe_at: probe_address(sub), names })
}

/// See [`Client::probe_at`]: none through a proxy, set in the config or the environment.
fn probe_address(sub: &Subscription) -> Option<(String, u16)> {
    let direct = match &sub.proxy {
        Some(crate::config::Proxy::Direct) => true,
        Some(crate::config::Proxy::Via(_)) => false,
        None => ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .all(|v| std::env::var_os(v).is_none_or(|s| s.is_empty())),
    };
    let url = &sub.url_full.0;
    let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
    direct.then(|| (host, url.port_or_known_default().unwrap_or(443)))
}

/// An offline probe that costs the endpoint a TCP connection and nothing more: connect,
/// then hang up. Only when it connects does the real request follow.
pub async fn connect_probe(host: &str, port: u16, timeout: Duration) -> Result<(), (TransportError, String)> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => {
            let kind = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput => TransportError::Dns,
                _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => TransportError::Dns,
                _ => TransportError::Connect,
            };
            Err((kind, format!("connect probe: {e}")))
        }
        Err(_) => Err((TransportError::ConnectTimeout, format!("connect probe: no connection within {timeout:?}"))),
    }
}

/// The HTTP client of one subscription: its timeouts, its extra CA, no redirects.
fn http_client(sub: &Subscription) -> Result<reqwest::Client, ClientError> {
    crate::init_crypto();
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(sub.timeout)
        .connect_timeout(sub.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        // The agent retries on its own schedule; reqwest's own retry layer would clone
        // every request in case the connection refuses it (HTTP/2 only).
        .retry(reqwest::retry::never())
        .tcp_nodelay(true);
    match &sub.proxy {
        None => {}
        Some(crate::config::Proxy::Direct) => b = b.no_proxy(),
        Some(crate::config::Proxy::Via(url)) => {
            let proxy = reqwest::Proxy::all(url.0.clone())?
                .no_proxy(sub.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string));
            // Ours replaces whatever the environment names.
            b = b.no_proxy().proxy(proxy);
        }
    }
    if let Some(path) = &sub.ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile { path: shown.clone(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|source| ClientError::CaCert { path: shown.clone(), source })?;
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&sub.client_cert, &sub.client_key) {
        b = b.identity(identity(cert, key)?);
    }
    Ok(b.build()?)
}

/// A client certificate and its key, from two PEM files (reqwest takes them as one).
fn identity(cert: &std::path::Path, key: &std::path::Path) -> Result<reqwest::Identity, ClientError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| ClientError::ClientCertFile { path: p.display().to_string(), source })
    };
    let mut pem = read(cert)?;
    pem.push(b'\n');
    pem.extend(read(key)?);
    reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::ClientIdentity {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    })
}

/// A request ready to go.
pub struct Prepared {
    /// As sent: compressed when `compression` says so.
    pub body: Vec<u8>,
    pub headers: HeaderMap,
}

fn put(headers: &mut HeaderMap, name: &str, value: &str) {
    // Names and values were validated with the config, and wire text is percent-encoded
    // (`header_value`), so nothing is refused here.
    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
        put_named(headers, n, value);
    }
}

fn put_named(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Body and headers for one attempt of `due`, signed now; `token` is an OAuth2 access
/// token fetched for it; `compression` encodes the body, and the signature covers the
/// bytes as sent.
pub fn prepare(
    sub: &Subscription,
    names: &Names,
    due: &Due,
    now: SystemTime,
    token: Option<&str>,
    compression: Option<super::compress::Compression>,
) -> Prepared {
    let rendered = render(sub, due, now);
    let mut headers = HeaderMap::with_capacity(12);
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    put_named(&mut headers, names.event.clone(), &header_value(&due.event_type));
    put_named(&mut headers, names.delivery.clone(), &due.delivery_id);
    // Counts the attempts that reached the endpoint (an answer that spent the retry
    // budget), not offline probes that never connected: the receiver's first request
    // for a delivery says 1.
    headers.insert(names.attempt.clone(), HeaderValue::from(due.budget_used.saturating_add(1)));
    put_named(&mut headers, names.device.clone(), &header_value(&due.device_id));
    let (headers, body) = finish(sub, headers, rendered, &due.delivery_id, now, token, compression);
    Prepared { body, headers }
}

/// One request carrying `members` (a batch, `batch.format` says how), under batch id
/// `id`: one signature over the body as sent.
pub fn prepare_batch(
    sub: &Subscription,
    names: &Names,
    members: &[Due],
    id: &str,
    now: SystemTime,
    token: Option<&str>,
    compression: Option<super::compress::Compression>,
) -> Prepared {
    let ndjson = sub.batch.as_ref().is_some_and(|b| b.format == crate::config::BatchFormat::Ndjson);
    let bodies: Vec<String> = members.iter().map(|d| render(sub, d, now).body).collect();
    let body = if ndjson {
        let mut b = bodies.join("\n");
        b.push('\n');
        b
    } else {
        format!("[{}]", bodies.join(","))
    };
    let mut headers = HeaderMap::with_capacity(12);
    let content_type = if ndjson { "application/x-ndjson" } else { "application/json" };
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    put_named(&mut headers, names.batch.clone(), id);
    headers.insert(names.batch_size.clone(), HeaderValue::from(members.len()));
    let sent_before = members.iter().map(|d| d.budget_used).max().unwrap_or(0);
    headers.insert(names.attempt.clone(), HeaderValue::from(sent_before.saturating_add(1)));
    if let Some(first) = members.first()
        && members.iter().all(|d| d.device_id == first.device_id)
    {
        put_named(&mut headers, names.device.clone(), &header_value(&first.device_id));
    }
    let rendered = format::Rendered { body, headers: Vec::new() };
    let (headers, body) = finish(sub, headers, rendered, id, now, token, compression);
    Prepared { body, headers }
}

/// The body `due` takes in the subscription's format, timestamped truly if the clock
/// now allows.
fn render(sub: &Subscription, due: &Due, now: SystemTime) -> format::Rendered {
    // Taken while the clock was not good: made true now if it can be, else marked.
    let (created_ms, timestamp_quality) = crate::clock::dated(due.created_ms, due.clock);
    let parts = EnvelopeParts {
        id: &due.event_id,
        event_type: &due.event_type,
        created_ms,
        device_id: &due.device_id,
        delivery_id: &due.delivery_id,
        data: &due.data,
        timestamp_quality: timestamp_quality.map(crate::clock::Quality::as_str),
    };
    let opts = FormatOptions {
        summary: sub.summary.as_deref(),
        routing_key: sub.routing_key.as_ref().map(|s| s.expose()),
        api_key: sub.api_key.as_ref().map(|s| s.expose()),
        now_ms: now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
    };
    format::render(sub.format, &parts, &opts)
}

/// What every request adds to its own headers: the subscription's headers, its
/// authorization, the format's headers, the body's encoding and, last, the signature
/// over the body as sent under `id` (the `webhook-id`).
fn finish(
    sub: &Subscription,
    mut headers: HeaderMap,
    rendered: format::Rendered,
    id: &str,
    now: SystemTime,
    token: Option<&str>,
    compression: Option<super::compress::Compression>,
) -> (HeaderMap, Vec<u8>) {
    for (name, value) in &sub.headers {
        put(&mut headers, name, value.expose());
    }
    let bearer = match &sub.auth {
        Some(crate::config::Auth::Bearer(t)) => Some(t.expose()),
        _ => token,
    };
    if let Some(token) = bearer {
        put(&mut headers, "Authorization", &format!("Bearer {token}"));
    }
    for (name, value) in &rendered.headers {
        put(&mut headers, name, value);
    }
    let body = match compression {
        Some(how) => {
            put(&mut headers, "content-encoding", how.encoding());
            super::compress::compress(how, rendered.body.as_bytes())
        }
        None => rendered.body.into_bytes(),
    };
    let ts = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for (name, value) in sign::sign_headers(sub.signature, &sub.keys.0, &sub.header_prefix, id, ts, &body) {
        put(&mut headers, &name, &value);
    }
    (headers, body)
}

/// What one attempt got back.
#[derive(Debug, Default)]
pub struct Sent {
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub location: Option<String>,
    /// The endpoint's `Date` header: its clock, to compare ours with.
    pub date: Option<String>,
    pub error: Option<(TransportError, String)>,
    pub snippet: Option<String>,
    pub duration: Duration,
    /// The request's size on the wire before TLS: request line, headers, body; with
    /// `then`, of every request of the attempt.
    pub sent_bytes: u64,
    /// Of `sent_bytes`, what earlier requests of the attempt took: they were counted in
    /// the metrics under `resent` when they were answered.
    pub resent_bytes: u64,
}

impl Sent {
    /// `next`, sent after this one within the same attempt: its answer, and the time
    /// and bytes of both.
    pub fn then(self, next: Sent) -> Sent {
        Sent {
            duration: self.duration + next.duration,
            sent_bytes: self.sent_bytes + next.sent_bytes,
            resent_bytes: self.sent_bytes,
            ..next
        }
    }

    /// The bytes of the attempt's last request, which its result is counted under.
    pub fn last_request_bytes(&self) -> u64 {
        self.sent_bytes - self.resent_bytes
    }
}

/// What a request takes on the wire (HTTP/1.1, before TLS): its request line, the
/// headers we set and the ones the client adds (Host, Content-Length, User-Agent,
/// Accept), and the body.
fn request_bytes(method: &reqwest::Method, url: &reqwest::Url, p: &Prepared) -> u64 {
    let target = url.path().len() + url.query().map_or(0, |q| q.len() + 1);
    let line = method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let ours: usize = p.headers.iter().map(|(n, v)| n.as_str().len() + 2 + v.len() + 2).sum();
    let host =
        "host: ".len() + url.host_str().map_or(0, str::len) + url.port().map_or(0, |p| 1 + p.to_string().len()) + 2;
    let length = "content-length: ".len() + p.body.len().to_string().len() + 2;
    let agent = "user-agent: ".len() + USER_AGENT.len() + 2 + "accept: */*\r\n".len();
    (line + ours + host + length + agent + 2 + p.body.len()) as u64
}

pub async fn send(client: &reqwest::Client, sub: &Subscription, prepared: Prepared) -> Sent {
    let started = Instant::now();
    let method = reqwest::Method::from_bytes(sub.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let sent_bytes = request_bytes(&method, &sub.url_full.0, &prepared);
    let result =
        client.request(method, sub.url_full.0.clone()).headers(prepared.headers).body(prepared.body).send().await;
    let mut sent = Sent { sent_bytes, ..Sent::default() };
    match result {
        Ok(mut resp) => {
            sent.status = Some(resp.status().as_u16());
            let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            sent.retry_after = header("retry-after");
            sent.location = header("location");
            sent.date = header("date");
            let mut body = Vec::new();
            // The status is what counts; a body cut short is not a failed delivery.
            while let Ok(Some(chunk)) = resp.chunk().await {
                let room = BODY_READ_MAX - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= BODY_READ_MAX {
                    break;
                }
            }
            if !body.is_empty() {
                body.truncate(SNIPPET_MAX);
                sent.snippet = Some(String::from_utf8_lossy(&body).into_owned());
            }
        }
        Err(e) => {
            let kind = super::explain::transport_error(&e);
            // Nothing reached the wire if no connection (or no TLS session) was made:
            // an offline endpoint's probes spend no bandwidth budget.
            if matches!(
                kind,
                TransportError::Connect | TransportError::Dns | TransportError::ConnectTimeout | TransportError::Tls
            ) {
                sent.sent_bytes = 0;
            }
            sent.error = Some((kind, super::explain::explain(&e, sub.ca_file.is_some())));
        }
    }
    sent.duration = started.elapsed();
    sent
}

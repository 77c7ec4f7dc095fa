//! HTTP endpoints on 127.0.0.1 that record every request and answer from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{pki, wait_until};

/// What an endpoint answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Never answer within the test.
    Hang,
    /// Close the connection without an answer.
    Close,
    /// Answer with this status after this long.
    Slow(Duration, u16),
    /// 413 to a body longer than this many bytes, else 200.
    BodyLimit(usize),
    /// 429 with `Retry-After: N` to a delivery's first attempt (`X-Fleethook-Attempt: 1`),
    /// 200 to any later one: a rate limit every new delivery runs into.
    ThrottleFirstAttempts(u64),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// Over TLS: whether the connection it came on resumed an earlier TLS session.
    pub resumed: Option<bool>,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct EndpointState {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    default: Reply,
}

/// An HTTP server on 127.0.0.1 that records every request and answers from a script.
pub struct Endpoint {
    pub port: u16,
    state: Arc<Mutex<EndpointState>>,
    stop: CancellationToken,
    rt: tokio::runtime::Runtime,
}

impl Endpoint {
    /// On a port the kernel picks as it binds (no window for another test to take it).
    pub fn start(default: Reply) -> Endpoint {
        Endpoint::start_on(0, default, Vec::new())
    }

    pub fn scripted(script: Vec<Reply>, default: Reply) -> Endpoint {
        Endpoint::start_on(0, default, script)
    }

    pub fn start_on(port: u16, default: Reply, script: Vec<Reply>) -> Endpoint {
        Endpoint::start_with(port, default, script, None)
    }

    /// An HTTPS endpoint whose certificate is signed by a fresh CA; returns the CA's PEM.
    pub fn start_tls(default: Reply) -> (Endpoint, String) {
        let (acceptor, ca_pem) = tls_acceptor();
        (Endpoint::start_with(0, default, Vec::new(), Some(acceptor)), ca_pem)
    }

    /// An HTTPS endpoint with the TLS setup given (see [`pki::Pki::acceptor`]).
    pub fn start_with_tls(default: Reply, acceptor: tokio_rustls::TlsAcceptor) -> Endpoint {
        Endpoint::start_with(0, default, Vec::new(), Some(acceptor))
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }

    fn start_with(port: u16, default: Reply, script: Vec<Reply>, tls: Option<tokio_rustls::TlsAcceptor>) -> Endpoint {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let state = Arc::new(Mutex::new(EndpointState { requests: Vec::new(), script: script.into(), default }));
        let stop = CancellationToken::new();
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (st, token) = (state.clone(), stop.clone());
        rt.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let st = st.clone();
                let token = token.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let svc = service_fn(move |req| answer(req, st.clone(), None));
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = token.cancelled() => {} }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let resumed = stream.get_ref().1.handshake_kind()
                                == Some(tokio_rustls::rustls::HandshakeKind::Resumed);
                            let svc = service_fn(move |req| answer(req, st.clone(), Some(resumed)));
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = token.cancelled() => {} }
                        }
                    }
                });
            }
        });
        Endpoint { port, state, stop, rt }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers `reply` from now on (after any script left).
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        wait_until(timeout, || self.count() >= n);
        self.requests()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    st: Arc<Mutex<EndpointState>>,
    resumed: Option<bool>,
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let size = body.len();
    let first_attempt = parts.headers.get("x-fleethook-attempt").is_some_and(|v| v == "1");
    let reply = {
        let mut s = st.lock().unwrap();
        s.requests.push(Request {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            headers: parts.headers,
            body,
            at: Instant::now(),
            resumed,
        });
        s.script.pop_front().unwrap_or_else(|| s.default.clone())
    };
    let (status, headers) = match reply {
        Reply::Status(s) => (s, Vec::new()),
        Reply::WithHeaders(s, h) => (s, h),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (500, Vec::new())
        }
        // A service error makes hyper drop the connection without a response.
        Reply::Close => return Err(std::io::Error::other("closing without an answer")),
        Reply::Slow(after, s) => {
            tokio::time::sleep(after).await;
            (s, Vec::new())
        }
        Reply::BodyLimit(max) => (if size > max { 413 } else { 200 }, Vec::new()),
        Reply::ThrottleFirstAttempts(secs) if first_attempt => (429, vec![("retry-after", secs.to_string())]),
        Reply::ThrottleFirstAttempts(_) => (200, Vec::new()),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(resp)
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let pki = pki::Pki::new();
    (pki.acceptor(false), pki.ca_pem.clone())
}

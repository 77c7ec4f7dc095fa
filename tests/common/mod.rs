//! Real parts for the integration tests: a mosquitto per test on a free port with its own
//! persistence directory, HTTP endpoints on 127.0.0.1 that answer as scripted, and the
//! real `fleethook` binary.

#![allow(dead_code)]

pub mod pki;

use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A port nothing listens on now, and one this test process has not handed out before:
/// the kernel may offer a just-released port again, and two parallel tests holding the
/// same one (a broker and another test's endpoint) would talk to each other's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `f` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Lines for the listener: TLS files and options.
    tls: String,
    /// Settings that replace the defaults below (`max_queued_messages 5`).
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls: String::new(), extra: String::new() };
        m.spawn();
        m
    }

    /// A broker with `extra` settings, one per line, in place of the defaults.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls: String::new(), extra: extra.to_string() };
        m.spawn();
        m
    }

    /// A broker on TLS only, whose certificate `pki` issued for `localhost`, that
    /// accepts only clients with a certificate `pki` issued.
    pub fn start_requiring_client_certs(pki: &pki::Pki) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write(dir.path(), "broker", &["localhost"]);
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls, extra: String::new() };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let base = format!(
            "user root\nlistener {} 127.0.0.1\n{}allow_anonymous true\npersistence true\npersistence_location {}/\nmax_inflight_messages 100\nmax_queued_messages 100000\n",
            self.port,
            self.tls,
            self.dir.path().display()
        );
        let replaced: Vec<&str> = self.extra.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let kept: String = base
            .lines()
            .filter(|l| !replaced.contains(&l.split_whitespace().next().unwrap_or("")))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&conf, format!("{kept}{}\n", self.extra)).unwrap();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (run ./scripts/test.sh, which installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "mosquitto did not start listening"
        );
    }

    /// Stops the broker cleanly (it writes its persistence file) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Publishes QoS 1 messages and returns once the broker has acked every one.
pub fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_flagged(port, messages, false)
}

/// Publishes QoS 1 messages with the retain flag.
pub fn publish_retained(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_flagged(port, messages, true)
}

fn publish_flagged(port: u16, messages: &[(String, Vec<u8>)], retain: bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut opts = rumqttc::MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, messages.len() + 10);
        for (topic, payload) in messages {
            client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, retain, payload.clone()).await.unwrap();
        }
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked < messages.len() {
            let ev = tokio::time::timeout_at(deadline, events.poll()).await.expect("broker acked in time").unwrap();
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev {
                acked += 1;
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    });
}

pub fn mission(device: &str, n: usize, status: &str) -> (String, Vec<u8>) {
    let body = serde_json::json!({"mission_id": format!("m-{n}"), "seq": n, "status": status});
    (format!("fleet/{device}/mission"), body.to_string().into_bytes())
}

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
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
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
                    let svc = service_fn(move |req| answer(req, st.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let conn = http.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! { _ = conn => {}, _ = token.cancelled() => {} }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
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
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let size = body.len();
    let reply = {
        let mut s = st.lock().unwrap();
        s.requests.push(Request {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            headers: parts.headers,
            body,
            at: Instant::now(),
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
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(resp)
}

/// The real agent binary, run with a config file in its own directory.
pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
}

impl Agent {
    /// Writes `config` (with `{dir}` replaced by the agent's directory) and starts it.
    pub fn start(dir: &Path, config: &str) -> Agent {
        Agent::start_env(dir, config, &[])
    }

    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let mut a = Agent::configure(dir, config);
        a.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        a.spawn();
        a
    }

    /// Writes the config without starting the agent.
    pub fn configure(dir: &Path, config: &str) -> Agent {
        let config_path = dir.join("fleethook.toml");
        std::fs::write(&config_path, config.replace("{dir}", &dir.display().to_string())).unwrap();
        Agent {
            dir: dir.to_path_buf(),
            config: config_path,
            env: Vec::new(),
            child: None,
            log: PathBuf::new(),
            starts: 0,
        }
    }

    /// Replaces the config file (for SIGHUP).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, config.replace("{dir}", &self.dir.display().to_string())).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("agent running").id(), sig);
    }

    pub fn spawn(&mut self) {
        self.starts += 1;
        self.log = self.dir.join(format!("agent-{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fleethook"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "fleethook=debug")
            // Whatever the host's time service is doing, a test's clock is good unless
            // the test says otherwise (tests/clocks.rs lies to the agent on purpose).
            .env("FLEETHOOK_CLOCK", "synced")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Runs `fleethook ARGS --config <this agent's config>`: a socket command reaches it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_fleethook")).args(args).arg("--config").arg(&self.config).output().unwrap()
    }

    /// The same with `--json`: asserts that it succeeded and parses what it printed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(&[args, &["--json"]].concat());
        assert!(out.status.success(), "fleethook {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the agent has subscribed to its routes' topics.
    pub fn wait_subscribed(&self) {
        assert!(
            wait_until(Duration::from_secs(15), || self.log().contains("Subscribed to the route topics")),
            "the agent did not subscribe; log:\n{}",
            self.log()
        );
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        signal(c.id(), "TERM");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "the agent did not exit within 20 s of SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to commit, ack or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// CPU time the agent has used so far (user + system), from /proc.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// A read-only view of the agent's outbox.
    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_with_flags(
            self.dir.join("outbox.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asserts that `req` carries a valid `scheme` signature with [`SECRET`] under header
/// prefix `prefix`, checked against the test's clock with the 5-minute tolerance.
pub fn verify(req: &Request, scheme: fleethook::sign::Scheme, prefix: &str) {
    use fleethook::sign;
    sign::verify(
        scheme,
        &[SECRET],
        prefix,
        &req.headers,
        &req.body,
        std::time::SystemTime::now(),
        sign::DEFAULT_TOLERANCE,
    )
    .unwrap_or_else(|e| panic!("{scheme:?} signature does not verify: {e}; headers {:?}", req.headers));
}

/// The config head every test shares: broker, outbox in the agent's dir, one route.
/// How many times each published seq (`{"seq":N,…}`) arrived.
pub fn arrivals(ep: &Endpoint) -> std::collections::HashMap<u64, usize> {
    let mut seen = std::collections::HashMap::new();
    for r in ep.requests() {
        *seen.entry(r.json()["data"]["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

pub fn all_arrived(ep: &Endpoint, n: u64) -> bool {
    let seen = arrivals(ep);
    (0..n).all(|i| seen.contains_key(&i))
}

/// Prints what arrived of seqs `0..n` (with the `faults` the run caused) and asserts that
/// every one did.
pub fn report(name: &str, ep: &Endpoint, n: u64, faults: &str) {
    let seen = arrivals(ep);
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!("{name}: {n} published, {} delivered, {duplicates} duplicates, {faults}", seen.len());
    assert!(missing.is_empty(), "{name}: {} never arrived: {:?}", missing.len(), &missing[..missing.len().min(20)]);
}

/// A random seed for a fault test, printed; `FLEETHOOK_TEST_SEED` repeats a run.
pub fn seed() -> u64 {
    let s = std::env::var("FLEETHOOK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("seed {s} (set FLEETHOOK_TEST_SEED to repeat)");
    s
}

pub fn base_config(broker_port: u16) -> String {
    format!(
        r#"
device_id = "test-robot"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "fleethook-test-{broker_port}"
[storage]
path = "{{dir}}/outbox.db"
synchronous = "normal"
[status]
socket = "{{dir}}/status.sock"
[heartbeat]
interval = "0s"
[delivery]
offline_probe_max = "500ms"
shutdown_grace = "2s"

[[route]]
topic = "fleet/+/mission"
event = "mission.{{/status}}"
device_id = "{{topic.1}}"

[[route]]
topic = "fleet/+/alert"
event = "alert.{{/kind}}"
device_id = "{{topic.1}}"
"#
    )
}

/// A subscription signed with [`SECRET`]; a quick retry schedule unless `extra` sets one.
pub fn subscription(name: &str, url: &str, extra: &str) -> String {
    let retry = if extra.contains("retry =") { "" } else { "retry = [\"200ms\", \"200ms\", \"200ms\"]\n" };
    format!(
        "\n[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nallow_http = true\nsecret = \"{SECRET}\"\n{retry}{extra}\n"
    )
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let pki = pki::Pki::new();
    (pki.acceptor(false), pki.ca_pem.clone())
}

/// The real CLI as uid 65534, outside the agent's group.
pub fn as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_fleethook")])
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// Runs the Python `script` over `requests` and returns the JSON it prints. Before it,
/// `SECRET` is set, `verify(secret, headers, body)` is the README's own stdlib snippet as
/// documented, and `requests` is a list of `{"headers": {…}, "body": bytes as sent}`.
pub fn python_over(requests: &[Request], script: &str) -> serde_json::Value {
    use base64::Engine;
    use std::io::Write;
    let input: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into())).collect();
            serde_json::json!({"headers": headers, "body": base64::engine::general_purpose::STANDARD.encode(&r.body)})
        })
        .collect();
    let prelude = format!(
        r#"
import base64, json, re, sys
SECRET = "{SECRET}"
ns = {{}}
exec(re.search(r"```python\n(.*?)```", open("{readme}").read(), re.S).group(1), ns)
verify = ns["verify"]
requests = [dict(r, body=base64.b64decode(r["body"])) for r in json.load(sys.stdin)]
"#,
        readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")
    );
    let mut py = Command::new("python3")
        .args(["-c", &(prelude + script)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

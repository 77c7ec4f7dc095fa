//! `cargo bench --bench pipeline [-- --quick]`: the real agent (release binary) between a
//! real mosquitto and an HTTP receiver in this process, measured beside the ceilings of
//! the parts it sits between, in the same run: raw MQTT QoS 1, raw HTTP POSTs, raw SQLite
//! commits. Prints a table and writes target/bench/pipeline.json.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "pipeline/cellular.rs"]
mod cellular;
#[path = "pipeline/cpu.rs"]
mod cpu;
#[path = "pipeline/far.rs"]
mod far;
#[path = "../tests/common/network.rs"]
#[allow(dead_code)]
mod network;

const PAYLOAD_PAD: usize = 200;

struct Opts {
    quick: bool,
}

impl Opts {
    fn n(&self, quick: u64, full: u64) -> u64 {
        if self.quick { quick } else { full }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is 0, utime 11, stime 12 (in USER_HZ, 100 here).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU used per unit of work, in µs, by the broker and by this process (publisher,
/// subscriber, HTTP client and receiver) between `start` and now.
struct CpuMeter {
    broker_pid: u32,
    broker0: f64,
    bench0: f64,
}

impl CpuMeter {
    fn start(broker: &Broker) -> CpuMeter {
        let broker_pid = broker.child.id();
        CpuMeter { broker_pid, broker0: cpu_seconds(broker_pid), bench0: cpu_seconds(std::process::id()) }
    }

    /// (broker µs, bench µs) per unit over `n` units.
    fn per(&self, n: u64) -> (f64, f64) {
        let us = |s: f64| s * 1e6 / n as f64;
        (us(cpu_seconds(self.broker_pid) - self.broker0), us(cpu_seconds(std::process::id()) - self.bench0))
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!(r#"{{"seq":{seq},"ts_ns":{},"status":"completed","pad":"{}"}}"#, now_ns(), "p".repeat(PAYLOAD_PAD))
        .into_bytes()
}

// ---------------------------------------------------------------- the receiver

#[derive(Default)]
struct Received {
    /// Events: a batch counts its envelopes.
    count: AtomicU64,
    latencies_ns: Mutex<Vec<u64>>,
    /// HTTP requests, and their bytes as sent: request line, headers, body.
    requests: AtomicU64,
    wire_bytes: AtomicU64,
    /// When the first request came (ns since the epoch; 0: none yet).
    first_ns: AtomicU64,
    /// Arrivals per published `seq` (far rows count duplicates with it).
    seqs: Mutex<std::collections::HashMap<u64, u32>>,
    /// Set (ns): the receiver serves one request at a time, each taking this long (a small
    /// server that falls behind); 0: as fast as it can.
    pace_ns: AtomicU64,
    serving: tokio::sync::Mutex<()>,
}

impl Received {
    /// Events per second from the first request until now.
    fn rate_since_first(&self) -> f64 {
        let first = self.first_ns.load(Ordering::Relaxed);
        self.count.load(Ordering::Relaxed) as f64 / ((now_ns().saturating_sub(first)) as f64 / 1e9)
    }

    /// Events that arrived more than once (by `seq`).
    fn duplicates(&self) -> u64 {
        self.seqs.lock().unwrap().values().map(|n| u64::from(n.saturating_sub(1))).sum()
    }

    /// Distinct `seq`s that arrived.
    fn distinct(&self) -> u64 {
        self.seqs.lock().unwrap().len() as u64
    }
}

/// The envelopes of a body: one, a JSON array, or NDJSON; gzip-decoded first.
fn envelopes(body: &[u8], gzip: bool) -> Vec<Value> {
    use std::io::Read;
    let mut decoded = Vec::new();
    let body =
        if gzip && flate2::read::GzDecoder::new(body).read_to_end(&mut decoded).is_ok() { &decoded } else { body };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(a)) => a,
        Ok(v) => vec![v],
        Err(_) => body.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect(),
    }
}

/// An HTTP receiver in this process (hyper, keep-alive) that counts and timestamps.
async fn receiver(port: u16, got: Arc<Received>, stop: CancellationToken) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let got = got.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let got = got.clone();
                async move {
                    let head: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()
                        + req.uri().path().len()
                        + 16;
                    let gzip = req.headers().get("content-encoding").is_some_and(|v| v == "gzip");
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let arrived = now_ns();
                    let events = envelopes(&body, gzip);
                    {
                        let mut lat = got.latencies_ns.lock().unwrap();
                        let mut seqs = got.seqs.lock().unwrap();
                        for v in &events {
                            if let Some(ts) = v.pointer("/data/ts_ns").and_then(Value::as_u64) {
                                lat.push(arrived.saturating_sub(ts));
                            }
                            if let Some(seq) = v.pointer("/data/seq").and_then(Value::as_u64) {
                                *seqs.entry(seq).or_insert(0) += 1;
                            }
                        }
                    }
                    let pace = got.pace_ns.load(Ordering::Relaxed);
                    if pace > 0 {
                        let _one_at_a_time = got.serving.lock().await;
                        tokio::time::sleep(Duration::from_nanos(pace)).await;
                    }
                    let _ = got.first_ns.compare_exchange(0, arrived, Ordering::Relaxed, Ordering::Relaxed);
                    got.requests.fetch_add(1, Ordering::Relaxed);
                    got.wire_bytes.fetch_add((head + body.len()) as u64, Ordering::Relaxed);
                    got.count.fetch_add(events.len().max(1) as u64, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b""))))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
        });
    }
}

// ---------------------------------------------------------------- mosquitto

struct Broker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto() -> Broker {
    // FLEETHOOK_BENCH_INFLIGHT=20 measures with mosquitto's default in-flight window.
    mosquitto_with(&std::env::var("FLEETHOOK_BENCH_INFLIGHT").unwrap_or_else(|_| "1000".into()))
}

/// A mosquitto whose in-flight window per client is `inflight` (its default is 20).
fn mosquitto_with(inflight: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_inflight_messages {inflight}\nmax_queued_messages 0\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let bin = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
    let child =
        Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("mosquitto");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker { port, child, _dir: dir }
}

/// Publishes `n` QoS 1 messages as fast as the broker acks them, or at `rate` per second.
async fn publish(port: u16, topic: &str, n: u64, rate: Option<f64>) -> Duration {
    publish_with(port, topic, n, rate, payload).await
}

/// [`publish`] with payloads from `make`.
async fn publish_with(port: u16, topic: &str, n: u64, rate: Option<f64>, make: fn(u64) -> Vec<u8>) -> Duration {
    let mut opts = rumqttc::MqttOptions::new(format!("bench-pub-{}", free_port()), "127.0.0.1", port);
    opts.set_inflight(1000);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 1000);
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let start = Instant::now();
    for i in 0..n {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / r);
            tokio::time::sleep_until(due.into()).await;
        }
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, make(i)).await.unwrap();
    }
    while acked.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed();
    driver.abort();
    took
}

// ---------------------------------------------------------------- ceilings

async fn mqtt_ceiling(broker: &Broker, n: u64) -> f64 {
    let mut opts = rumqttc::MqttOptions::new("bench-sub", "127.0.0.1", broker.port);
    opts.set_inflight(1000);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 1000);
    client.subscribe("ceiling/#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = events.poll().await {
            break;
        }
    }
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let sub = tokio::spawn(async move {
        let mut first = None;
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) = events.poll().await {
                first.get_or_insert_with(Instant::now);
                if g.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    return first.unwrap().elapsed();
                }
            }
        }
    });
    let port = broker.port;
    let start = Instant::now();
    publish(port, "ceiling/x", n, None).await;
    let _ = tokio::time::timeout(Duration::from_secs(120), sub).await;
    n as f64 / start.elapsed().as_secs_f64()
}

async fn http_ceiling(n: u64, body_len: usize) -> f64 {
    let port = free_port();
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    tokio::spawn(receiver(port, got.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    fleethook::init_crypto();
    let client = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let body = "b".repeat(body_len);
    let rate = in_flight(n, 32, move || {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let _ = client.post(format!("http://127.0.0.1:{port}/")).body(body).send().await;
        }
    })
    .await;
    stop.cancel();
    rate
}

/// Runs `n` jobs `job()` makes, `limit` at a time; returns jobs per second.
async fn in_flight<F, Fut>(n: u64, limit: usize, job: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(limit));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let work = job();
        tasks.push(tokio::spawn(async move {
            work.await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn sqlite_ceiling(n: u64, batch: u64) -> f64 {
    use fleethook::outbox::{Inbound, NewDelivery, NewEvent, Store};
    let dir = tempfile::tempdir().unwrap();
    let cfg = fleethook::config::StorageConfig {
        path: dir.path().join("o.db"),
        max_bytes: 1 << 34,
        when_full: fleethook::config::WhenFull::DropOldest,
        synchronous: fleethook::config::Synchronous::Full,
        audit_per_subscription: 1000,
        write_behind: std::time::Duration::ZERO,
    };
    let mut store = Store::new(fleethook::outbox::open(&cfg).unwrap()).unwrap();
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        store.begin().unwrap();
        for _ in 0..batch {
            let e = NewEvent {
                id: fleethook::event::new_id(),
                event_type: "mission.completed".into(),
                device_id: "agv".into(),
                created_ms: 0,
                taken_ms: 0,
                clock: None,
                topic: "fleet/agv/mission".into(),
                data: String::from_utf8(payload(i)).unwrap(),
                priority: fleethook::event::Priority::Normal,
                collapse: false,
                dedupe_key: Some(fleethook::outbox::content_key("t", &i.to_le_bytes())),
                dedupe_check: false,
                retained_key: None,
                deliveries: vec![NewDelivery {
                    id: fleethook::event::new_id(),
                    subscription: "s".into(),
                    expires_ms: i64::MAX,
                }],
            };
            store.insert(&Inbound::Event(e), 0).unwrap();
            i += 1;
        }
        store.commit().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- the agent

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGINT first: a `perf record` wrapper writes its data on the way out.
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(dir: &Path, broker: u16, endpoint: u16, name: &str) -> Agent {
        Agent::start_with(dir, broker, endpoint, name, "")
    }

    /// With `extra` keys in the subscription (batch, compression).
    fn start_with(dir: &Path, broker: u16, endpoint: u16, name: &str, extra: &str) -> Agent {
        // FLEETHOOK_BENCH_BROKER_WINDOW=N: the broker's window as a robot image sets it
        // (the far rows' mosquitto gets `max_inflight_messages N` too).
        let window = std::env::var("FLEETHOOK_BENCH_BROKER_WINDOW")
            .map(|n| format!("broker_max_inflight = {n}"))
            .unwrap_or_default();
        let config = format!(
            r#"device_id = "bench-agv"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "fleethook-bench-{name}"
{window}
[storage]
path = "{dir}/outbox.db"
max_bytes = "4GiB"
[status]
socket = "{dir}/status.sock"
[heartbeat]
interval = "0s"
[delivery]
offline_probe_max = "1s"
[[route]]
topic = "fleet/+/mission"
event = "mission.{{/status}}"
device_id = "{{topic.1}}"
[[subscription]]
name = "bench"
url = "http://127.0.0.1:{endpoint}/hook"
allow_http = true
secret = "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE="
max_in_flight = 32
{extra}
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("fleethook.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        // FLEETHOOK_BENCH_AGENT=PATH measures another build (an A/B against this one);
        // FLEETHOOK_BENCH_PERF=FILE runs the throughput agent under `perf record` into FILE
        // (FLEETHOOK_BENCH_PERF_AGENT=cpu-fast, for one, picks another run's agent).
        let binary = std::env::var("FLEETHOOK_BENCH_AGENT").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fleethook").into());
        let mut command = match std::env::var("FLEETHOOK_BENCH_PERF") {
            Ok(out) if name == std::env::var("FLEETHOOK_BENCH_PERF_AGENT").as_deref().unwrap_or("main") => {
                let mut c = Command::new("perf");
                c.args(["record", "-g", "-F", "1999", "-o", &out, "--", &binary]);
                c
            }
            _ => Command::new(&binary),
        };
        let child = command
            .args(["run", "--config"])
            .arg(dir.join("fleethook.toml"))
            .env("RUST_LOG", "fleethook=warn,fleethook::ingest=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = Agent { child, dir: dir.to_path_buf() };
        for _ in 0..500 {
            if std::fs::read_to_string(dir.join("agent.log"))
                .unwrap_or_default()
                .contains("Subscribed to the route topics")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        a
    }

    /// Asks the agent for its audit log, which writes the fast path's rows first.
    fn flush_fast(&self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_fleethook"))
            .args(["log", "--json", "--limit", "1", "--socket"])
            .arg(self.dir.join("status.sock"))
            .output();
    }

    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    fn status_kib(&self, key: &str) -> u64 {
        self.proc("status")
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") as f64 / 1024.0
    }

    fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") as f64 / 1024.0
    }

    /// User + system CPU seconds so far.
    fn cpu_s(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    fn write_bytes(&self) -> u64 {
        self.proc("io")
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn outbox_bytes(&self) -> u64 {
        let db = self.dir.join("outbox.db");
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        size(db.clone()) + size(PathBuf::from(format!("{}-wal", db.display())))
    }

    /// Events committed so far. The newest event's seq, read from the outbox directly:
    /// O(log n), where `status` counts every row, which with a million queued took a
    /// good part of a core at the rate this is polled and slowed what it measured.
    /// Exact here: this outbox is fresh and nothing is deleted while the endpoint is down.
    fn queued(&self) -> u64 {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        rusqlite::Connection::open_with_flags(self.dir.join("outbox.db"), flags)
            .and_then(|c| c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .unwrap_or(0)
    }

    /// Waits until `n` events are stored, or `limit` passes.
    async fn wait_queued(&self, n: u64, limit: Duration) {
        let end = Instant::now() + limit;
        while self.queued() < n && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Memory under a flood: three publishers as fast as mosquitto takes them (its queue
/// for the agent unbounded), once with the endpoint down and once with it up; each with
/// a fresh agent, so each peak RSS is that flood's own.
async fn flood(
    broker: &Broker,
    opts: &Opts,
    endpoint: u16,
    got: &Received,
    record: &mut impl FnMut(&str, f64, &str, Option<f64>),
) {
    let n = opts.n(200_000, 1_000_000);
    let third = n / 3;
    let n = third * 3;
    for up in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let target = if up { endpoint } else { free_port() };
        let agent = Agent::start(dir.path(), broker.port, target, if up { "flood-up" } else { "flood-down" });
        let before = got.count.load(Ordering::Relaxed);
        let start = Instant::now();
        let publishers: Vec<_> =
            (0..3).map(|_| tokio::spawn(publish(broker.port, "fleet/bench-agv/mission", third, None))).collect();
        let done =
            |agent: &Agent| if up { got.count.load(Ordering::Relaxed) >= before + n } else { agent.queued() >= n };
        while !done(&agent) && start.elapsed() < Duration::from_secs(1800) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for p in publishers {
            let _ = p.await;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        let what = if up { "endpoint up" } else { "endpoint down" };
        record(&format!("flood of {n} by 3 publishers, {what}: events/s"), rate, "events/s", None);
        record(&format!("flood of {n} by 3 publishers, {what}: peak RSS"), agent.peak_rss_mib(), "MiB", None);
    }
}

async fn wait_count(got: &Received, n: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while got.count.load(Ordering::Relaxed) < n {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(start.elapsed())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

// ---------------------------------------------------------------- the run

#[tokio::main]
async fn main() {
    let opts = Opts { quick: std::env::args().any(|a| a == "--quick") };
    let mut results: Vec<(String, f64, String, Option<f64>)> = Vec::new();
    let mut record = |name: &str, value: f64, unit: &str, ceiling: Option<f64>| {
        let ratio = ceiling.filter(|c| c.is_finite()).map(|c| value / c);
        println!(
            "{name:<44} {value:>12.2} {unit:<10} {}",
            ratio.map(|r| format!("{:>5.0} % of ceiling", r * 100.0)).unwrap_or_default()
        );
        let _ = std::io::stdout().flush();
        results.push((name.to_string(), value, unit.to_string(), ratio));
    };
    println!("fleethook pipeline benchmark ({})", if opts.quick { "quick" } else { "full" });
    // Whichever rows a run measures (the *_ONLY knobs stop early), it writes them.
    run(&opts, &mut record).await;
    write_json(&opts, &results);
}

/// `target/bench/pipeline.json`: the rows this run measured.
fn write_json(opts: &Opts, results: &[(String, f64, String, Option<f64>)]) {
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::env::consts::ARCH
    );
    let json = json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "machine": machine,
        "payload_bytes": payload(0).len(),
        "results": results.iter().map(|(n, v, u, r)| json!({"name": n, "value": v, "unit": u, "ratio_to_ceiling": r})).collect::<Vec<_>>(),
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pipeline.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote target/bench/pipeline.json");
}

async fn run(opts: &Opts, mut record: impl FnMut(&str, f64, &str, Option<f64>)) {
    let broker = mosquitto();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;

    // Ceilings, same machine, same moment, with what each costs in CPU: everything here
    // shares the same cores, so the agent's share of them bounds its throughput.
    // FLEETHOOK_BENCH_AGENT_ONLY=1 skips them and the drain: a fast A/B of two builds.
    let agent_only = std::env::var_os("FLEETHOOK_BENCH_AGENT_ONLY").is_some();
    let (mut mqtt, mut http, mut sqlite) = (f64::NAN, f64::NAN, f64::NAN);
    let envelope_len = 460;
    let n = opts.n(20_000, 100_000);
    if !agent_only {
        let meter = CpuMeter::start(&broker);
        mqtt = mqtt_ceiling(&broker, n).await;
        let (mqtt_broker_us, mqtt_clients_us) = meter.per(n);
        record("ceiling: MQTT QoS 1 (rumqttc → mosquitto → rumqttc)", mqtt, "msg/s", None);
        println!(
            "  (CPU per message: mosquitto {mqtt_broker_us:.1} µs, publisher + subscriber {mqtt_clients_us:.1} µs)"
        );
        let meter = CpuMeter::start(&broker);
        http = http_ceiling(n, envelope_len).await;
        let (_, http_us) = meter.per(n);
        record("ceiling: HTTP POST (reqwest, 32 in flight)", http, "req/s", None);
        println!("  (CPU per request: client + receiver {http_us:.1} µs)");
        let meter = CpuMeter::start(&broker);
        let hyper_rate = cpu::hyper_ceiling(n, envelope_len).await;
        let (_, hyper_us) = meter.per(n);
        record("ceiling: HTTP POST (hyper's client, 32 in flight)", hyper_rate, "req/s", None);
        println!("  (CPU per request: client + receiver {hyper_us:.1} µs)");
        sqlite = tokio::task::spawn_blocking(move || sqlite_ceiling(n, 256)).await.unwrap();
        record("ceiling: SQLite FULL, our schema, 256 rows/commit", sqlite, "rows/s", None);
    }
    let smallest = mqtt.min(http).min(sqlite);
    // FLEETHOOK_BENCH_CEILINGS_ONLY=1 stops here: the ceilings, and reqwest against hyper.
    if std::env::var_os("FLEETHOOK_BENCH_CEILINGS_ONLY").is_some() {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let endpoint = free_port();
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    tokio::spawn(receiver(endpoint, got.clone(), stop.clone()));
    // FLEETHOOK_BENCH_FLASH_ONLY=1 (with AGENT_ONLY) runs only the flash rows: a fast A/B of
    // what a change writes.
    let flash_only = std::env::var_os("FLEETHOOK_BENCH_FLASH_ONLY").is_some();
    // FLEETHOOK_BENCH_FLOOD_ONLY=1 runs only the memory rows of a flood (below).
    if std::env::var_os("FLEETHOOK_BENCH_FLOOD_ONLY").is_some() {
        flood(&broker, opts, endpoint, &got, &mut record).await;
        return;
    }
    // FLEETHOOK_BENCH_CPU_ONLY=1 runs only the agent's CPU per event on each path: the
    // A/B for a change meant to make the agent cheaper.
    if std::env::var_os("FLEETHOOK_BENCH_CPU_ONLY").is_some() {
        cpu::run(&broker, opts, &mut record).await;
        return;
    }
    // FLEETHOOK_BENCH_FAR_ONLY=1 runs only the far-endpoint rows (through a delaying proxy).
    if std::env::var_os("FLEETHOOK_BENCH_FAR_ONLY").is_some() {
        far::run(opts, &mut record).await;
        return;
    }
    if !flash_only {
        let agent = Agent::start(dir.path(), broker.port, endpoint, "main");

        // Idle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss = agent.rss_mib();
        let idle_for = Duration::from_secs(opts.n(3, 10));
        let cpu0 = agent.cpu_s();
        tokio::time::sleep(idle_for).await;
        let idle_cpu = (agent.cpu_s() - cpu0) / idle_for.as_secs_f64() * 100.0;
        record("agent: RSS idle", idle_rss, "MiB", None);
        record("agent: idle CPU", idle_cpu, "% of a core", None);

        // Latency at a steady 200 events/s.
        let secs = opts.n(3, 10);
        got.latencies_ns.lock().unwrap().clear();
        let before = got.count.load(Ordering::Relaxed);
        let w0 = agent.write_bytes();
        publish(broker.port, "fleet/bench-agv/mission", 200 * secs, Some(200.0)).await;
        wait_count(&got, before + 200 * secs, Duration::from_secs(30)).await;
        let written_at_200 = (agent.write_bytes() - w0) as f64 / (200 * secs) as f64;
        let mut lat = std::mem::take(&mut *got.latencies_ns.lock().unwrap());
        lat.sort_unstable();
        record("latency publish → endpoint p50 @200/s", percentile(&lat, 0.50), "ms", None);
        record("latency publish → endpoint p99 @200/s", percentile(&lat, 0.99), "ms", None);
        record("latency publish → endpoint p99.9 @200/s", percentile(&lat, 0.999), "ms", None);

        // Throughput, publishing as fast as the broker takes it.
        // FLEETHOOK_BENCH_THROUGHPUT_ONLY=1 (with AGENT_ONLY) stops after this row, which
        // it measures over the full run's 100 000 events: a steadier A/B of CPU per event.
        let throughput_only = std::env::var_os("FLEETHOOK_BENCH_THROUGHPUT_ONLY").is_some();
        let n = if throughput_only { 100_000 } else { opts.n(20_000, 100_000) };
        let before = got.count.load(Ordering::Relaxed);
        let (cpu0, w0) = (agent.cpu_s(), agent.write_bytes());
        let meter = CpuMeter::start(&broker);
        let start = Instant::now();
        let publisher = tokio::spawn(publish(broker.port, "fleet/bench-agv/mission", n, None));
        let took = wait_count(&got, before + n, Duration::from_secs(600)).await.unwrap_or(start.elapsed());
        let _ = publisher.await;
        let delivered_rate = n as f64 / took.as_secs_f64();
        let (broker_us, bench_us) = meter.per(n);
        let cpu_per_10k = (agent.cpu_s() - cpu0) / n as f64 * 10_000.0;
        let written_per_event = (agent.write_bytes() - w0) as f64 / n as f64;
        record("agent: end-to-end delivered (throughput)", delivered_rate, "events/s", Some(smallest));
        // What a flood beyond the endpoint's pace stores: anything not answered within
        // `write_behind` of its arrival takes the durable path.
        let stored = agent.queued() as f64 / (n + 200 * secs) as f64 * 100.0;
        record("agent: events stored in the run (durable path)", stored, "%", None);
        record("agent: peak RSS", agent.peak_rss_mib(), "MiB", None);
        record("agent: CPU per 10 000 delivered", cpu_per_10k, "CPU s", None);
        let payload_len = payload(0).len() as f64;
        record("agent: disk written per delivered event", written_per_event, "bytes", None);
        record("agent: … as a multiple of the payload", written_per_event / payload_len, "× payload", None);
        record("agent: disk written per delivered event @200/s", written_at_200, "bytes", None);
        // Where the cores went during the throughput run, per delivered event, and how much
        // of it the agent may use for everything to fit at half the smallest ceiling.
        let agent_us = cpu_per_10k * 100.0;
        record("CPU per event in the throughput run: mosquitto", broker_us, "µs", None);
        record("CPU per event: publisher + receiver (bench)", bench_us, "µs", None);
        record("CPU per event: the agent", agent_us, "µs", None);
        let fits = cores * 1e6 / (broker_us + bench_us + agent_us);
        println!("  ({cores:.0} cores at that cost fit {fits:.0} events/s)");
        for share in [0.5, 0.8] {
            let left_for_agent = cores * 1e6 / (share * smallest) - broker_us - bench_us;
            if left_for_agent.is_finite() {
                let name = format!("CPU per event {:.0} % of the ceiling leaves the agent", share * 100.0);
                record(&name, left_for_agent, "µs", None);
            }
        }
        drop(agent);
        if throughput_only {
            return;
        }
    }

    // Flash wear (DESIGN guarantee 6): bytes the agent writes to the block device, per
    // delivered event with the endpoint keeping up, and per queued event with it down.
    // Each window ends with `fleethook log`, which writes what the fast path holds to the
    // tables first: the figure includes those writes.
    let wear_secs = |rate: u64| -> u64 {
        match rate {
            1 => opts.n(30, 120),
            10 => opts.n(15, 60),
            _ => opts.n(5, 20),
        }
    };
    for rate in [1u64, 10, 200] {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(dir.path(), broker.port, endpoint, &format!("wear{rate}"));
        let n = rate * wear_secs(rate);
        let before = got.count.load(Ordering::Relaxed);
        let w0 = agent.write_bytes();
        publish(broker.port, "fleet/bench-agv/mission", n, Some(rate as f64)).await;
        wait_count(&got, before + n, Duration::from_secs(60)).await;
        agent.flush_fast();
        let per = (agent.write_bytes() - w0) as f64 / n as f64;
        record(&format!("flash: bytes written per delivered event @{rate}/s"), per, "bytes", None);
    }
    for rate in [10u64, 200] {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::start(dir.path(), broker.port, free_port(), &format!("queued{rate}"));
        let n = rate * wear_secs(rate);
        let w0 = agent.write_bytes();
        publish(broker.port, "fleet/bench-agv/mission", n, Some(rate as f64)).await;
        agent.wait_queued(n, Duration::from_secs(60)).await;
        let per = (agent.write_bytes() - w0) as f64 / n as f64;
        record(&format!("flash: bytes written per queued event @{rate}/s (offline)"), per, "bytes", None);
    }
    far::run(opts, &mut record).await;
    cpu::run(&broker, opts, &mut record).await;
    if agent_only {
        return;
    }
    cellular::run(&broker, opts, &mut record).await;

    // Durable ingest with the endpoint down, then the drain.
    let backlog = opts.n(100_000, 1_000_000);
    let down = free_port();
    let dir2 = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir2.path(), broker.port, down, "drain");
    let start = Instant::now();
    let publisher = tokio::spawn(publish(broker.port, "fleet/bench-agv/mission", backlog, None));
    agent.wait_queued(backlog, Duration::from_secs(900)).await;
    let ingest_rate = backlog as f64 / start.elapsed().as_secs_f64();
    let _ = publisher.await;
    record("agent: durable ingest (endpoint down)", ingest_rate, "events/s", Some(mqtt));
    // The peak is the flood's: mosquitto 2.0.11 sends past its in-flight window once acks
    // flow, so the agent holds what arrived ahead of its commits. Queued is measured once
    // the flood is over and the agent has handed that memory back (a few seconds).
    record("agent: peak RSS during the flood", agent.peak_rss_mib(), "MiB", None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    record("agent: RSS with the backlog queued", agent.rss_mib(), "MiB", None);
    println!(
        "  (of which anonymous {:.1} MiB, file-backed {:.1} MiB, shared {:.1} MiB)",
        agent.status_kib("RssAnon:") as f64 / 1024.0,
        agent.status_kib("RssFile:") as f64 / 1024.0,
        agent.status_kib("RssShmem:") as f64 / 1024.0
    );
    record("agent: outbox bytes per queued event", agent.outbox_bytes() as f64 / backlog as f64, "bytes", None);
    let drained = Arc::new(Received::default());
    let (agent_cpu0, meter) = (agent.cpu_s(), CpuMeter::start(&broker));
    tokio::spawn(receiver(down, drained.clone(), stop.clone()));
    let took = wait_count(&drained, backlog, Duration::from_secs(1800)).await;
    let drain_rate = took.map(|t| backlog as f64 / t.as_secs_f64()).unwrap_or(0.0);
    // Without the wait for the offline endpoint's next probe (up to offline_probe_max).
    let drain_from_first = drained.rate_since_first();
    let (_, receiver_us) = meter.per(backlog);
    let agent_us = (agent.cpu_s() - agent_cpu0) * 1e6 / backlog as f64;
    record("agent: drain of the backlog", drain_rate, "events/s", Some(http));
    println!(
        "  (CPU per delivery: agent {agent_us:.1} µs, receiver {receiver_us:.1} µs; {cores:.0} cores at that cost fit {:.0}/s)",
        cores * 1e6 / (agent_us + receiver_us)
    );
    drop(agent);
    record("agent: drain of the backlog, from its first delivery", drain_from_first, "events/s", Some(http));
    cellular::batched_drain(&broker, backlog, drain_from_first, &mut record).await;
    flood(&broker, opts, endpoint, &got, &mut record).await;
    stop.cancel();
}

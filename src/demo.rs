//! `fleethook demo`: the whole pipeline on one machine with nothing to set up. An MQTT
//! broker (embedded, or `mosquitto` from PATH), a simulated AGV, the verifying receiver,
//! and the real agent between them; halfway through, the receiver goes away for a few
//! seconds and the queued events drain when it returns.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::Agent;
use crate::config::Config;
use crate::receive::{self, ReceiveOptions, Received};

const DEVICE: &str = "demo-agv-001";
const OUTAGE: Duration = Duration::from_secs(4);

pub struct DemoOptions {
    /// Run this long, then drain and exit; None runs until Ctrl-C.
    pub seconds: Option<u64>,
}

/// The outcome: what was published, delivered and verified.
#[derive(Debug, Default)]
pub struct Summary {
    pub published: u64,
    pub delivered: u64,
    pub verified: u64,
    /// Events that arrived as more than one event: the same `seq` under another
    /// `delivery_id` (the agent took a message the broker sent again for a new event).
    pub duplicates: u64,
    /// The same delivery sent again (same `delivery_id`): an attempt whose answer the
    /// agent never saw, as the receiver went away mid-request. Receivers dedupe these.
    pub redelivered: u64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.published > 0
            && self.verified == self.published
            && self.delivered == self.published
            && self.duplicates == 0
    }
}

/// What the demo has seen arrive: per `seq`, the delivery ids it came under.
#[derive(Default)]
struct Seen {
    delivered: std::collections::HashMap<u64, HashSet<String>>,
    verified: HashSet<u64>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(dir: &Path, broker_port: u16, receiver_port: u16, secret: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
device_id = "{DEVICE}"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
[storage]
path = "{db}"
[status]
socket = "{sock}"
[heartbeat]
interval = "0s"
[delivery]
offline_probe_max = "1s"
shutdown_grace = "2s"

[[route]]
topic = "fleet/+/mission"
event = "mission.{{/status}}"
device_id = "{{topic.1}}"
dedupe = "/event_id"
priority = "high"

[[route]]
topic = "fleet/+/battery"
event = "robot.battery"
device_id = "{{topic.1}}"
priority = "low"
payload = "msgpack"

[[subscription]]
name = "local-receiver"
url = "http://127.0.0.1:{receiver_port}/hooks/fleet"
allow_http = true
events = ["mission.*", "robot.*"]
secret = "{secret}"
retry = ["500ms", "1s", "2s", "5s", "10s"]
# The receiver reads the same clock as the agent, so a timestamp signed with it always
# verifies here, synced or not.
clock_policy = "sign"
"#,
        db = dir.join("outbox.db").display(),
        sock = dir.join("status.sock").display(),
    );
    Ok(Config::parse(&text, Path::new("demo.toml"))?)
}

/// Runs the demo; prints as it goes and returns the summary.
pub async fn run(opts: DemoOptions, stop: CancellationToken) -> anyhow::Result<Summary> {
    let dir = tempfile_dir()?;
    let broker_port = free_port()?;
    let _broker = start_broker(broker_port, dir.path())?;
    let secret = crate::sign::new_secret();
    let receiver_port = free_port()?;
    let config = config(dir.path(), broker_port, receiver_port, &secret)?;
    let t0 = Instant::now();
    let say = |what: &str| println!("{:>6.1}s  {what}", t0.elapsed().as_secs_f64());

    println!(
        "fleethook demo: broker on 127.0.0.1:{broker_port}, receiver on 127.0.0.1:{receiver_port}, outbox in {}",
        dir.path().display()
    );
    let (rx_tx, mut received) = mpsc::unbounded_channel::<Received>();
    let receive_opts = ReceiveOptions {
        secrets: vec![secret.clone()],
        tolerance: crate::sign::DEFAULT_TOLERANCE,
        print: false,
        print_body: false,
    };
    let mut receiver = Some(start_receiver(receiver_port, receive_opts.clone(), rx_tx.clone()).await?);

    let agent_stop = CancellationToken::new();
    let agent = Agent::start(&config, agent_stop.clone())?;
    let ready = Instant::now();
    while !agent.mqtt.lock().map(|m| m.subscribed).unwrap_or(false) {
        if ready.elapsed() > Duration::from_secs(15) {
            bail!("the agent did not subscribe to the broker within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say("agent connected and subscribed; the AGV starts publishing");

    let mut mqtt = MqttOptions::new("demo-agv-simulator", "127.0.0.1", broker_port);
    mqtt.set_keep_alive(Duration::from_secs(10));
    let (publisher, mut events) = AsyncClient::new(mqtt, 256);
    let pub_loop = tokio::spawn(async move { while events.poll().await.is_ok() {} });

    let run_for = opts.seconds.map(Duration::from_secs);
    let outage_at = run_for.map_or(Duration::from_secs(6), |d| d.mul_f64(0.3));
    let mut outage_end: Option<Instant> = None;
    let mut outage_done = false;
    let mut summary = Summary::default();
    let mut seen = Seen::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let statuses = ["started", "waypoint_reached", "completed"];
    let publishing = |t: Instant| run_for.is_none_or(|d| t.duration_since(t0) < d);

    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let now = Instant::now();
                if !publishing(now) {
                    break;
                }
                let n = summary.published;
                let (topic, payload, label) = if n % 4 == 3 {
                    // MessagePack, as groove-x mqtt_bridge publishes by default.
                    (format!("fleet/{DEVICE}/battery"), battery(n), "robot.battery (MessagePack)".to_string())
                } else {
                    let status = statuses[(n as usize) % 3];
                    let json = serde_json::json!({"seq": n, "event_id": format!("ev-{n}"), "mission_id": format!("m-{:04}", n / 4), "status": status, "station": format!("dock-{}", n % 7)});
                    (format!("fleet/{DEVICE}/mission"), json.to_string().into_bytes(), format!("mission.{status}"))
                };
                publisher.publish(topic, QoS::AtLeastOnce, false, payload).await?;
                summary.published += 1;
                say(&format!("published  #{n:<4} {label}"));
                if !outage_done && outage_end.is_none() && now.duration_since(t0) >= outage_at {
                    if let Some(r) = receiver.take() { r.cancel(); }
                    outage_end = Some(now + OUTAGE);
                    say("── the receiver goes away (a dead zone): the agent marks it offline, probes it, and events queue in the outbox ──");
                }
                if let Some(end) = outage_end && now >= end {
                    receiver = Some(start_receiver(receiver_port, receive_opts.clone(), rx_tx.clone()).await?);
                    outage_end = None;
                    outage_done = true;
                    let pending = agent.outbox.stats().await.map(|s| s.subscriptions.iter().map(|s| s.pending).sum::<u64>()).unwrap_or(0);
                    say(&format!("── the receiver is back: {pending} queued events drain ──"));
                }
            }
            Some(r) = received.recv() => note(&r, &mut summary, &mut seen, &say),
        }
    }
    if let Some(r) = receiver.take() {
        r.cancel();
    }
    // Whatever happened, the receiver must be up for the drain.
    let final_receiver = start_receiver(receiver_port, receive_opts, rx_tx).await?;
    say("publishing stopped; waiting for everything to be delivered");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (seen.delivered.len() as u64) < summary.published && Instant::now() < deadline {
        tokio::select! {
            Some(r) = received.recv() => note(&r, &mut summary, &mut seen, &say),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled(), if opts.seconds.is_some() => break,
        }
    }
    summary.delivered = seen.delivered.len() as u64;
    summary.verified = seen.verified.len() as u64;
    agent_stop.cancel();
    agent.wait().await;
    final_receiver.cancel();
    pub_loop.abort();
    println!(
        "summary: published {}, delivered {}, verified {}, duplicates {}, redelivered {} — {}",
        summary.published,
        summary.delivered,
        summary.verified,
        summary.duplicates,
        summary.redelivered,
        if summary.ok() { "OK" } else { "MISSING EVENTS" }
    );
    Ok(summary)
}

/// A battery reading as a ROS bridge that speaks MessagePack sends it.
fn battery(n: u64) -> Vec<u8> {
    use rmpv::Value;
    let map = Value::Map(vec![
        (Value::from("seq"), Value::from(n)),
        (Value::from("percent"), Value::from(90 - (n % 50) as i64)),
        (Value::from("charging"), Value::from(false)),
    ]);
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &map);
    out
}

fn note(r: &Received, s: &mut Summary, seen: &mut Seen, say: &impl Fn(&str)) {
    let seq = serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.pointer("/data/seq").and_then(|s| s.as_u64()));
    let Some(seq) = seq else { return };
    let ids = seen.delivered.entry(seq).or_default();
    let id = r.delivery_id.clone().unwrap_or_default();
    if ids.contains(&id) {
        s.redelivered += 1;
    } else if !ids.is_empty() {
        s.duplicates += 1;
    }
    ids.insert(id);
    if r.verified {
        seen.verified.insert(seq);
    }
    let mark = if r.verified { "✓ signature verified" } else { "✗ SIGNATURE REJECTED" };
    say(&format!(
        "delivered  #{seq:<4} {} (attempt {}) {mark}",
        r.event_type.as_deref().unwrap_or("?"),
        r.attempt.as_deref().unwrap_or("?")
    ));
}

async fn start_receiver(
    port: u16,
    opts: ReceiveOptions,
    tx: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<CancellationToken> {
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "receiver port busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("cannot bind the demo receiver"),
        }
    };
    let token = CancellationToken::new();
    tokio::spawn(receive::serve(listener, opts, Some(tx), token.clone()));
    Ok(token)
}

/// A temporary directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!("fleethook-demo-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(TempDir(dir))
}

/// Keeps the broker alive; stops a spawned mosquitto when dropped.
struct Broker(Option<std::process::Child>);

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The embedded broker's settings on `port` (127.0.0.1): the demo's, and the broker
/// matrix's rumqttd (tests/brokers.rs).
#[cfg(feature = "embedded-broker")]
pub fn rumqttd_config(port: u16) -> anyhow::Result<rumqttd::Config> {
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true
"#
    );
    toml::from_str(&text).context("embedded broker config")
}

#[cfg(feature = "embedded-broker")]
fn start_broker(port: u16, _dir: &Path) -> anyhow::Result<Broker> {
    let config = rumqttd_config(port)?;
    std::thread::Builder::new().name("demo-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            eprintln!("the embedded broker stopped: {e}");
        }
    })?;
    Ok(Broker(None))
}

#[cfg(not(feature = "embedded-broker"))]
fn start_broker(port: u16, dir: &Path) -> anyhow::Result<Broker> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\n"))?;
    let child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("this build has no embedded broker and `mosquitto` is not on PATH")?;
    Ok(Broker(Some(child)))
}

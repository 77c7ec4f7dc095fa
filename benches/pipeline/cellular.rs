//! Issue #18's rows: what batching and compression save on a cellular link. The same
//! 200 events/s go to one subscription sending one event per request, and to one sending
//! gzip batches (`max_events = 100`, `max_wait = "1s"`); the receiver counts requests and
//! their bytes as sent (request line, headers, body). The payloads are a robot's, not
//! padding that compresses to nothing: a mission with a pose, battery, ids and a random
//! note, about 260 bytes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Agent, Broker, Opts, Received, free_port, now_ns, percentile, publish_with, receiver, wait_count};

const BATCHED: &str = "compression = \"gzip\"\nbatch = { max_events = 100, max_wait = \"1s\" }";

/// A mission event as a robot's bridge sends it, with numbers and ids that differ.
pub fn robot_payload(seq: u64) -> Vec<u8> {
    let r = |scale: f64| fastrand::f64() * scale;
    let note: String = (0..24).map(|_| fastrand::alphanumeric()).collect();
    format!(
        r#"{{"seq":{seq},"ts_ns":{},"status":"completed","mission_id":"m-{}","robot":"agv-017","map":"warehouse-3","pose":{{"x":{:.3},"y":{:.3},"theta":{:.4}}},"battery":{:.1},"speed":{:.2},"note":"{note}"}}"#,
        now_ns(),
        fastrand::u32(..),
        r(120.0),
        r(80.0),
        r(std::f64::consts::TAU),
        r(100.0),
        r(2.0)
    )
    .into_bytes()
}

/// Bytes and requests per event, and latency, at 200 events/s: one event per request,
/// then gzip batches.
pub async fn run(broker: &Broker, opts: &Opts, record: &mut impl FnMut(&str, f64, &str, Option<f64>)) {
    let secs = opts.n(10, 30);
    let n = 200 * secs;
    let mut per_event = [0.0; 2];
    for (i, (label, extra)) in [("one event per request", ""), ("batch + gzip", BATCHED)].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = free_port();
        let got = Arc::new(Received::default());
        let stop = CancellationToken::new();
        tokio::spawn(receiver(endpoint, got.clone(), stop.clone()));
        let agent = Agent::start_with(dir.path(), broker.port, endpoint, &format!("cell{i}"), extra);
        publish_with(broker.port, "fleet/bench-agv/mission", n, Some(200.0), robot_payload).await;
        wait_count(&got, n, Duration::from_secs(60)).await;
        let bytes = got.wire_bytes.load(Ordering::Relaxed) as f64 / n as f64;
        let requests = got.requests.load(Ordering::Relaxed) as f64 / n as f64;
        per_event[i] = bytes;
        record(&format!("cellular: bytes on the wire per event, {label}"), bytes, "bytes", None);
        record(&format!("cellular: HTTP requests per event, {label}"), requests, "req", None);
        let mut lat = std::mem::take(&mut *got.latencies_ns.lock().unwrap());
        lat.sort_unstable();
        record(&format!("cellular: p99 publish → endpoint @200/s, {label}"), percentile(&lat, 0.99), "ms", None);
        drop(agent);
        stop.cancel();
    }
    record("cellular: batch + gzip sends fewer bytes by", per_event[0] / per_event[1], "×", None);
}

/// The backlog drain again with batches (no compression: loopback), against the drain
/// one event per request measured just before. Both count from the first delivery: the
/// wait for the offline endpoint's next probe (up to a second) is not the drain's.
pub async fn batched_drain(
    broker: &Broker,
    backlog: u64,
    unbatched_rate: f64,
    record: &mut impl FnMut(&str, f64, &str, Option<f64>),
) {
    let dir = tempfile::tempdir().unwrap();
    let down = free_port();
    let agent = Agent::start_with(
        dir.path(),
        broker.port,
        down,
        "drain-batched",
        "batch = { max_events = 100, max_wait = \"1s\" }",
    );
    let publisher = tokio::spawn(publish_with(broker.port, "fleet/bench-agv/mission", backlog, None, super::payload));
    agent.wait_queued(backlog, Duration::from_secs(900)).await;
    let _ = publisher.await;
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    let cpu0 = agent.cpu_s();
    tokio::spawn(receiver(down, got.clone(), stop.clone()));
    let took = wait_count(&got, backlog, Duration::from_secs(1800)).await;
    let rate = took.map(|_| got.rate_since_first()).unwrap_or(0.0);
    let agent_us = (agent.cpu_s() - cpu0) * 1e6 / backlog as f64;
    record("agent: drain of the backlog, batches of 100, from its first delivery", rate, "events/s", None);
    println!("  (CPU per delivery: agent {agent_us:.1} µs; {} requests)", got.requests.load(Ordering::Relaxed));
    record("agent: batched drain vs one event per request", rate / unbatched_rate, "×", None);
    drop(agent);
    stop.cancel();
}

//! Far endpoints: the same agent with the network in between. A TCP proxy
//! (tests/common/network.rs) delays each direction by half the answer time, so the
//! handshake and the request's own bytes pay it as on a WiFi or LTE link, and a mosquitto
//! with its default in-flight window (20) feeds the agent, as on a robot. Each row reports
//! bytes written per delivered event (`/proc/PID/io`, after `fleethook log` has written what
//! the fast path holds) and publish → endpoint latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::network::{Link, Proxy};
use super::{Agent, Opts, Received, free_port, mosquitto_with, percentile, publish, receiver, wait_count};

const TOPIC: &str = "fleet/bench-agv/mission";

/// One measured window: what it cost and how it went.
struct Window {
    flash_per_event: f64,
    p50_ms: f64,
    p99_ms: f64,
    delivered: u64,
    duplicates: u64,
    events_per_s: f64,
}

/// What the network and the endpoint do during a window.
#[derive(Clone, Copy)]
struct Far {
    /// The endpoint's answer time as the agent sees it (half each way through the proxy).
    rtt: Duration,
    /// The receiver serves one request at a time, each taking this long.
    pace: Option<Duration>,
    /// A stall of `.0` every `.1` (a roam).
    roam: Option<(Duration, Duration)>,
}

async fn window(broker_port: u16, name: &str, far: Far, rate: u64, secs: u64) -> Window {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = free_port();
    let got = Arc::new(Received::default());
    if let Some(p) = far.pace {
        got.pace_ns.store(p.as_nanos() as u64, Ordering::Relaxed);
    }
    let stop = CancellationToken::new();
    tokio::spawn(receiver(endpoint, got.clone(), stop.clone()));
    let proxy = Arc::new(Proxy::start(endpoint, Link { delay: far.rtt / 2, ..Link::default() }));
    let agent = Agent::start(dir.path(), broker_port, proxy.port, name);
    let n = rate * secs;
    let roaming = far.roam.map(|(stall, every)| {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                proxy.stall(stall);
            }
        })
    });
    let w0 = agent.write_bytes();
    let start = Instant::now();
    publish(broker_port, TOPIC, n, Some(rate as f64)).await;
    wait_count(&got, n, Duration::from_secs(secs * 4 + 120)).await;
    let took = start.elapsed();
    if let Some(r) = roaming {
        r.abort();
    }
    agent.flush_fast();
    let written = agent.write_bytes() - w0;
    let mut lat = std::mem::take(&mut *got.latencies_ns.lock().unwrap());
    lat.sort_unstable();
    let w = Window {
        flash_per_event: written as f64 / n as f64,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        delivered: got.distinct(),
        duplicates: got.duplicates(),
        events_per_s: got.distinct() as f64 / took.as_secs_f64(),
    };
    drop(agent);
    stop.cancel();
    w
}

pub async fn run(opts: &Opts, record: &mut impl FnMut(&str, f64, &str, Option<f64>)) {
    let broker_window = std::env::var("FLEETHOOK_BENCH_BROKER_WINDOW").unwrap_or_else(|_| "20".into());
    let broker = mosquitto_with(&broker_window);
    let secs = |rate: u64| match rate {
        1 => opts.n(20, 60),
        10 => opts.n(15, 60),
        _ => opts.n(5, 20),
    };
    // FLEETHOOK_BENCH_FAR_ROW=150@200 measures that one row and stops (a quick look);
    // `roam`, `180` or `5s` one of the rows after them.
    let row = std::env::var("FLEETHOOK_BENCH_FAR_ROW").ok();
    let only: Option<(u64, u64)> =
        row.as_deref().and_then(|v| v.split_once('@').and_then(|(r, n)| Some((r.parse().ok()?, n.parse().ok()?))));
    let named = |name: &str| row.as_deref().is_none_or(|r| r == name);
    let only = only.or(row.as_ref().map(|_| (u64::MAX, u64::MAX)));
    for rtt_ms in [0u64, 150, 400] {
        let far = Far { rtt: Duration::from_millis(rtt_ms), pace: None, roam: None };
        let label = if rtt_ms == 0 { "loopback".to_string() } else { format!("{rtt_ms} ms away") };
        for rate in [1u64, 10, 200] {
            if only.is_some_and(|o| o != (rtt_ms, rate)) {
                continue;
            }
            let w = window(broker.port, &format!("far{rtt_ms}-{rate}"), far, rate, secs(rate)).await;
            record(&format!("far: flash per delivered event, {label} @{rate}/s"), w.flash_per_event, "bytes", None);
            record(&format!("far: latency p50, {label} @{rate}/s"), w.p50_ms, "ms", None);
            record(&format!("far: latency p99, {label} @{rate}/s"), w.p99_ms, "ms", None);
            if rate == 200 {
                record(&format!("far: delivered rate, {label} @200/s"), w.events_per_s, "events/s", None);
            }
        }
    }
    // A roam: 10 events/s, 150 ms away, and every 20 s nothing flows for 5 s.
    let roam = Far {
        rtt: Duration::from_millis(150),
        pace: None,
        roam: Some((Duration::from_secs(5), Duration::from_secs(20))),
    };
    let roam_secs = opts.n(60, 120);
    if named("roam") {
        let w = window(broker.port, "far-roam", roam, 10, roam_secs).await;
        let n = 10 * roam_secs;
        record("far: roam (150 ms, 5 s stall every 20 s) delivered", w.delivered as f64 / n as f64 * 100.0, "%", None);
        record("far: roam duplicates", w.duplicates as f64, "events", None);
        record("far: roam flash per delivered event", w.flash_per_event, "bytes", None);
        record("far: roam latency p50", w.p50_ms, "ms", None);
        record("far: roam latency p99", w.p99_ms, "ms", None);
    }
    // An endpoint that falls behind on loopback: one request at a time, 180 a second, fed
    // 200 events/s.
    let slow_server = Far { rtt: Duration::ZERO, pace: Some(Duration::from_micros(5_555)), roam: None };
    if named("180") {
        let w = window(broker.port, "far-180", slow_server, 200, opts.n(10, 30)).await;
        record("far: flash per event, 200/s into a 180 req/s endpoint", w.flash_per_event, "bytes", None);
        record("far: delivered rate, 200/s into a 180 req/s endpoint", w.events_per_s, "events/s", None);
    }
    // An endpoint that answers in 5 s: every event is made durable (the held journal)
    // before its ack, and delivered from memory after it.
    let five = Far { rtt: Duration::from_secs(5), pace: None, roam: None };
    if named("5s") {
        let w = window(broker.port, "far-5s", five, 1, opts.n(30, 60)).await;
        record("far: flash per stored event, 5 s endpoint @1/s", w.flash_per_event, "bytes", None);
    }
}

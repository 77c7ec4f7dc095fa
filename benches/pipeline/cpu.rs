//! The agent's own CPU per delivered event, on each of its paths (docs/performance.md,
//! "CPU per event"). The throughput run above floods the agent past its endpoint's pace,
//! so most of what it delivers takes the durable path; these rows take each path alone:
//!
//! - **fast path**: a steady rate the endpoint keeps up with, one event per request, and
//!   nothing stored (the row prints the share stored to show it);
//! - **durable path**: the endpoint down while the events are queued, then up: ingest
//!   and drain together, and each apart;
//! - **batched**: the same with `batch = { max_events = 100 }`.
//!
//! CPU is the agent process's user + system time over the window (`/proc/PID/stat`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::{Agent, Broker, Opts, Received, free_port, in_flight, publish, receiver, wait_count};

/// The fast-path rate: well under what one endpoint answers on this machine.
const FAST_RATE: u64 = 2000;

pub async fn run(broker: &Broker, opts: &Opts, record: &mut impl FnMut(&str, f64, &str, Option<f64>)) {
    fast_path(broker, opts, record).await;
    let n = opts.n(30_000, 200_000);
    for (label, extra) in [("durable path", ""), ("batched, 100 per request", "batch = { max_events = 100 }")] {
        queued_then_drained(broker, n, label, extra, record).await;
    }
}

async fn fast_path(broker: &Broker, opts: &Opts, record: &mut impl FnMut(&str, f64, &str, Option<f64>)) {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = free_port();
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    tokio::spawn(receiver(endpoint, got.clone(), stop.clone()));
    let agent = Agent::start(dir.path(), broker.port, endpoint, "cpu-fast");
    let n = FAST_RATE * opts.n(10, 30);
    let cpu0 = agent.cpu_s();
    publish(broker.port, "fleet/bench-agv/mission", n, Some(FAST_RATE as f64)).await;
    wait_count(&got, n, Duration::from_secs(120)).await;
    let per_event = (agent.cpu_s() - cpu0) * 1e6 / n as f64;
    record(&format!("agent CPU per event: fast path, one per request @{FAST_RATE}/s"), per_event, "µs", None);
    agent.flush_fast();
    println!("  ({:.1} % of the events were stored)", agent.queued() as f64 / n as f64 * 100.0);
    drop(agent);
    stop.cancel();
}

async fn queued_then_drained(
    broker: &Broker,
    n: u64,
    label: &str,
    extra: &str,
    record: &mut impl FnMut(&str, f64, &str, Option<f64>),
) {
    let dir = tempfile::tempdir().unwrap();
    let down = free_port();
    let name = format!("cpu-{}", label.split(',').next().unwrap_or(label).replace(' ', "-"));
    let agent = Agent::start_with(dir.path(), broker.port, down, &name, extra);
    let cpu0 = agent.cpu_s();
    let publisher = tokio::spawn(publish(broker.port, "fleet/bench-agv/mission", n, None));
    agent.wait_queued(n, Duration::from_secs(900)).await;
    let _ = publisher.await;
    let ingest = agent.cpu_s() - cpu0;
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    let cpu1 = agent.cpu_s();
    tokio::spawn(receiver(down, got.clone(), stop.clone()));
    wait_count(&got, n, Duration::from_secs(1800)).await;
    let drain = agent.cpu_s() - cpu1;
    let us = |s: f64| s * 1e6 / n as f64;
    record(&format!("agent CPU per event: {label}, queued then drained"), us(ingest + drain), "µs", None);
    println!("  (ingest {:.1} µs, drain {:.1} µs per event)", us(ingest), us(drain));
    drop(agent);
    stop.cancel();
}

/// The raw HTTP POST rate of hyper's own client (hyper-util's pooled client, the one
/// reqwest wraps) to the same receiver, 32 in flight: beside the reqwest ceiling, what a
/// client without reqwest's layers would cost.
pub async fn hyper_ceiling(n: u64, body_len: usize) -> f64 {
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    let port = free_port();
    let got = Arc::new(Received::default());
    let stop = CancellationToken::new();
    tokio::spawn(receiver(port, got.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let uri: hyper::Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
    let body = Bytes::from("b".repeat(body_len));
    let rate = in_flight(n, 32, move || {
        let (client, body, uri) = (client.clone(), body.clone(), uri.clone());
        async move {
            let request = hyper::Request::post(uri)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .unwrap();
            if let Ok(response) = client.request(request).await {
                let _ = response.into_body().collect().await;
            }
        }
    })
    .await;
    stop.cancel();
    rate
}

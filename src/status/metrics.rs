//! Metrics a fleet can scrape: the `status` overview in Prometheus's text format,
//! served on `[metrics] listen` (GET /metrics) and printed by `fleethook metrics`. The
//! numbers are the ones `status` shows, read fresh at each scrape; nothing is counted
//! twice or kept in memory for it.

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Request as StatusRequest;
use super::context::Context;

/// The content type of [`render`]'s text: Prometheus's text format, which Prometheus,
/// `promtool` and node_exporter's textfile collector all read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The outcomes a delivery ends with, as `status` counts them.
const OUTCOMES: [&str; 5] = ["delivered", "failed", "expired", "evicted", "superseded"];
/// The states an endpoint can be in.
const STATES: [&str; 7] = ["online", "offline", "degraded", "paused", "gone", "clock", "tls"];

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Metrics made for one scrape; their names and help are fixed, so registering them
/// cannot fail.
struct Metrics(Registry);

impl Metrics {
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help).namespace("fleethook"), labels).expect("a valid metric");
        self.0.register(Box::new(g.clone())).expect("registered once");
        g
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help).namespace("fleethook"), labels).expect("a valid metric");
        self.0.register(Box::new(c.clone())).expect("registered once");
        c
    }

    fn gauge(&self, name: &str, help: &str, value: i64) {
        self.gauges(name, help, &[]).with_label_values::<&str>(&[]).set(value);
    }

    fn counter(&self, name: &str, help: &str, value: u64) {
        self.counters(name, help, &[]).with_label_values::<&str>(&[]).inc_by(value);
    }
}

/// The metrics text for one `status` result and what the dispatcher counted (`counted`,
/// from `AttemptMetrics`). Pure.
pub fn render(status: &Value, counted: Vec<prometheus::proto::MetricFamily>) -> String {
    let m = Metrics(Registry::new());
    let version = status["version"].as_str().unwrap_or("");
    let device = status["device_id"].as_str().unwrap_or("");
    m.gauges("build_info", "The agent's version and device id (always 1)", &["version", "device_id"])
        .with_label_values(&[version, device])
        .set(1);
    m.gauge("uptime_seconds", "Seconds since the agent started", i(&status["uptime_s"]));
    m.gauge("mqtt_connected", "1 while connected to the MQTT broker", i64::from(status["mqtt"]["connected"] == true));
    m.counter("mqtt_messages_total", "MQTT messages received since start", u(&status["mqtt"]["received"]));
    let st = &status["storage"];
    m.gauge("outbox_bytes", "The outbox's size on disk (database and WAL)", i(&st["bytes"]));
    m.gauge("outbox_max_bytes", "storage.max_bytes, the outbox's cap", i(&st["max_bytes"]));
    m.gauge("outbox_events", "Events stored in the outbox", i(&st["events"]));
    m.gauge("quarantined", "Messages in the quarantine", i(&st["quarantined"]));
    m.counter(
        "duplicates_total",
        "Redelivered messages recognised and not queued again, since start",
        u(&st["duplicates"]),
    );
    m.counter(
        "written_bytes_total",
        "Bytes the agent wrote to the block device since start (flash wear)",
        u(&st["written_bytes"]),
    );
    let ended = m.counters(
        "deliveries_total",
        "Deliveries that ended, by subscription and outcome",
        &["subscription", "outcome"],
    );
    let pending = m.gauges("pending", "Deliveries waiting, by subscription", &["subscription"]);
    let in_flight = m.gauges("in_flight", "Attempts out now, by subscription", &["subscription"]);
    let oldest = m.gauges(
        "oldest_pending_age_seconds",
        "Age of the oldest waiting delivery, by subscription",
        &["subscription"],
    );
    let state =
        m.gauges("endpoint_state", "1 for the state each subscription's endpoint is in", &["subscription", "state"]);
    for sub in status["subscriptions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = sub["name"].as_str().unwrap_or("");
        for outcome in OUTCOMES {
            ended.with_label_values(&[name, outcome]).inc_by(u(&sub[outcome]));
        }
        pending.with_label_values(&[name]).set(i(&sub["pending"]));
        in_flight.with_label_values(&[name]).set(i(&sub["in_flight"]));
        oldest.with_label_values(&[name]).set(i(&sub["oldest_pending_age_s"]));
        for s in STATES {
            state.with_label_values(&[name, s]).set(i64::from(sub["state"] == s));
        }
    }
    let mut out = Vec::new();
    // Encoding to memory cannot fail.
    let mut families = m.0.gather();
    families.extend(counted);
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Serves GET /metrics until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    crate::http_server::serve(listener, move |req| answer(req, ctx.clone()), shutdown).await
}

async fn answer(req: Request<Incoming>, ctx: Arc<Context>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "GET /metrics\n".into());
    }
    match ctx.handle(StatusRequest::Metrics).await {
        Ok(Value::String(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Ok(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "no metrics\n".into()),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{}\n", e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_becomes_labelled_metrics() {
        let status = json!({
            "version": "0.1.0", "device_id": "agv-7", "uptime_s": 12,
            "mqtt": {"connected": true, "received": 9},
            "storage": {"bytes": 4096, "max_bytes": 1048576, "events": 3, "quarantined": 1, "duplicates": 2, "written_bytes": 8192},
            "subscriptions": [{"name": "ops", "state": "offline", "pending": 3, "in_flight": 1, "delivered": 5,
                               "failed": 1, "expired": 0, "evicted": 0, "superseded": 0, "oldest_pending_age_s": 40}]
        });
        let counted = crate::live::AttemptMetrics::default();
        counted.declare("ops");
        counted.observe("ops", "delivered", std::time::Duration::from_millis(30), 900);
        counted.observe("ops", "retry", std::time::Duration::from_millis(300), 800);
        let text = render(&status, counted.gather());
        for line in [
            "fleethook_build_info{device_id=\"agv-7\",version=\"0.1.0\"} 1",
            "fleethook_mqtt_connected 1",
            "fleethook_deliveries_total{outcome=\"delivered\",subscription=\"ops\"} 5",
            "fleethook_deliveries_total{outcome=\"failed\",subscription=\"ops\"} 1",
            "fleethook_pending{subscription=\"ops\"} 3",
            "fleethook_oldest_pending_age_seconds{subscription=\"ops\"} 40",
            "fleethook_endpoint_state{state=\"offline\",subscription=\"ops\"} 1",
            "fleethook_endpoint_state{state=\"online\",subscription=\"ops\"} 0",
            "fleethook_written_bytes_total 8192",
            "fleethook_mqtt_messages_total 9",
            "fleethook_attempts_total{result=\"delivered\",subscription=\"ops\"} 1",
            "fleethook_attempts_total{result=\"offline\",subscription=\"ops\"} 0",
            "fleethook_sent_bytes_total{subscription=\"ops\"} 1700",
            "fleethook_attempt_duration_seconds_bucket{subscription=\"ops\",le=\"0.05\"} 1",
            "fleethook_attempt_duration_seconds_bucket{subscription=\"ops\",le=\"0.5\"} 2",
            "fleethook_attempt_duration_seconds_count{subscription=\"ops\"} 2",
            "# TYPE fleethook_deliveries_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "`{line}` missing:\n{text}");
        }
    }
}

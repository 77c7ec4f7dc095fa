//! `agent.heartbeat`: every `heartbeat.interval` the agent reports the robot's vitals
//! (sysinfo) and its own (queue depth, oldest pending, MQTT and endpoint states). Low
//! priority and collapsing, so a robot that was offline for a day sends one, not 1440.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{Priority, now_ms};
use crate::live::{EndpointViews, MqttView};
use crate::outbox::disk::{per_day, recent_per_day, written_by_agent};
use crate::outbox::query::Reader;
use crate::outbox::{NewEvent, Outbox};

pub const EVENT_TYPE: &str = "agent.heartbeat";

pub use crate::outbox::disk::free_disk;

/// The robot's vitals and the agent's own state.
pub struct Vitals {
    system: Option<sysinfo::System>,
    started: Instant,
}

impl Vitals {
    pub fn new() -> Vitals {
        let system = sysinfo::System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Vitals { system, started: Instant::now() }
    }

    /// Sysinfo figures; CPU is the usage since the previous call.
    pub fn sample(&mut self, state_path: &Path) -> Value {
        let (cpu, mem_used, mem_total) = match &mut self.system {
            Some(s) => {
                s.refresh_cpu_usage();
                s.refresh_memory();
                (Some(s.global_cpu_usage()), Some(s.used_memory()), Some(s.total_memory()))
            }
            None => (None, None, None),
        };
        let load = sysinfo::System::load_average().ok();
        let written = written_by_agent();
        json!({
            "cpu_percent": cpu.map(|c| (c * 10.0).round() / 10.0),
            "load": load.map(|l| json!([l.one, l.five, l.fifteen])),
            "memory_used_bytes": mem_used,
            "memory_total_bytes": mem_total,
            "disk_free_bytes": free_disk(state_path),
            "uptime_s": sysinfo::System::uptime().ok(),
            "agent_uptime_s": self.started.elapsed().as_secs(),
            "disk_written_bytes": written,
            "disk_written_per_day": written
                .and_then(|w| recent_per_day(w).map(|(r, _)| r).or_else(|| per_day(w, self.started.elapsed()))),
            "agent_version": env!("CARGO_PKG_VERSION"),
            "clock": crate::clock::quality(),
        })
    }
}

impl Default for Vitals {
    fn default() -> Self {
        Vitals::new()
    }
}

/// What the heartbeat reads and where it goes.
pub struct Heartbeat {
    pub config: Arc<Config>,
    pub outbox: Outbox,
    pub mqtt: MqttView,
    pub endpoints: EndpointViews,
    pub link: crate::link::Link,
}

/// Emits heartbeats every `heartbeat.interval` until `shutdown`.
pub async fn run(hb: Heartbeat, shutdown: CancellationToken) {
    let Heartbeat { config, outbox, mqtt, endpoints, link } = hb;
    let interval = config.heartbeat.interval;
    let state_path = config.storage.path.clone();
    let mut vitals = Vitals::new();
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let deliveries = config.deliveries(EVENT_TYPE, None, crate::clock::sched_ms());
        if deliveries.is_empty() {
            continue;
        }
        let mut data = vitals.sample(&state_path);
        // Counted on a read-only connection: the query reads every pending row, and the
        // writer has better things to do.
        let path = state_path.clone();
        let stats = tokio::task::spawn_blocking(move || Reader::open(&path).and_then(|r| r.stats()))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(stats) = stats {
            let pending: u64 = stats.subscriptions.iter().map(|s| s.pending).sum();
            let oldest = stats.subscriptions.iter().filter_map(|s| s.oldest_pending_ms).min();
            data["queue_depth"] = json!(pending);
            data["oldest_pending_age_s"] = json!(oldest.map(|t| (now - t).max(0) / 1000));
        }
        let m = mqtt.lock().map(|m| m.clone()).unwrap_or_default();
        data["mqtt"] = json!({ "connected": m.connected, "last_error": m.last_error, "broker_dropped": m.broker_dropped,
                "refused": m.refused });
        let views = endpoints.lock().map(|v| v.clone()).unwrap_or_default();
        let states: serde_json::Map<String, Value> = views.iter().map(|e| (e.name.clone(), json!(e.state))).collect();
        data["endpoints"] = Value::Object(states);
        // What the link costs: bytes sent in the last 24 hours and the budget left.
        let (mut sent, mut left) = (serde_json::Map::new(), serde_json::Map::new());
        for e in &views {
            let bytes = link.sent_24h(&e.name);
            sent.insert(e.name.clone(), json!(bytes));
            if let Some(budget) = e.daily_budget {
                left.insert(e.name.clone(), json!(budget.saturating_sub(bytes)));
            }
        }
        data["link"] = json!({ "profile": link.view().profile, "sent_bytes_24h": sent, "budget_left": left });
        let mut event = NewEvent::local(EVENT_TYPE, &config.device_id, &data, now, deliveries);
        // Low priority and collapsing: after an outage, the newest one is what matters.
        event.priority = Priority::Low;
        event.collapse = true;
        if let Err(e) = outbox.emit(event).await {
            tracing::debug!(error = %e, "Heartbeat not queued.");
        }
    }
}

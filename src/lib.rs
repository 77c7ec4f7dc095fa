//! fleethook: an edge agent that takes a robot's MQTT events into a durable SQLite outbox
//! and delivers them as signed webhooks.
//!
//! # Layout
//!
//! | module | owns |
//! | --- | --- |
//! | [`app`] | wiring the tasks, the shutdown order |
//! | [`config`] | the typed config, defaults, validation with file:line errors, secrets |
//! | [`event`] | ids (UUIDv7), event-type patterns, the envelope body |
//! | [`ingest`] | the MQTT loop, routes, acks after commit |
//! | [`outbox`] | the durable boundary: schema, the writer thread, all SQL |
//! | [`delivery`] | the dispatcher, HTTP attempts, the outcome table, retry timing, endpoint state |
//! | [`sign`] | signing and verifying, every scheme |
//! | [`format`](mod@format) | request bodies: envelope, Slack, PagerDuty, Datadog |
//! | [`status`] | the status socket: protocol, server, CLI client, tables |
//! | [`receive`] | the verifying local endpoint of `fleethook receive` |
//! | [`demo`] | `fleethook demo`: the whole pipeline on one machine |
//!
//! Data flows MQTT → [`ingest`] → [`outbox`] (commit, then ack) → [`delivery`] → HTTPS.

pub mod app;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod event;
pub mod format;
pub mod health;
pub mod heartbeat;
pub mod ingest;
pub mod live;
pub mod logging;
pub mod outbox;
pub mod receive;
pub mod route;
pub mod sign;
pub mod status;

/// Installs the one TLS crypto provider (ring) for rustls; safe to call many times.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

//! fleethook: an edge agent that takes a robot's MQTT events into a durable SQLite outbox
//! and delivers them as signed webhooks.
//!
//! # Layout
//!
//! Lower rows never import higher ones, and no two modules import each other.
//!
//! | module | owns |
//! | --- | --- |
//! | [`app`] | wiring the tasks, the shutdown order, reload, sd_notify |
//! | [`live`] | the read-only live views shared by status, heartbeat and app |
//! | [`status`] | the status socket: protocol, server, CLI client, tables |
//! | [`heartbeat`] | `agent.heartbeat`, a producer of local events |
//! | [`ingest`] | the MQTT loop, messages into events, acks after commit |
//! | [`delivery`] | the dispatcher, lanes, HTTP attempts, the outcome table, retry timing, endpoint state |
//! | [`outbox`] | the durable boundary: schema, the writer thread, all SQL |
//! | [`config`] | the typed config, defaults, validation with file:line errors, secrets, subscription matching |
//! | [`route`] | topic filters and templates: pure parsing |
//! | [`format`](mod@format) | request bodies: envelope, Slack, PagerDuty, Datadog |
//! | [`event`] | ids (UUIDv7), event-type patterns, the envelope body |
//! | [`clock`] | the schedule clock (boottime, re-based across restarts), the wall clock's quality |
//! | [`sign`] | signing and verifying, every scheme |
//! | [`http_server`] | the HTTP/1 accept loop that `/metrics` and `fleethook receive` share |
//! | [`receive`] | the verifying local endpoint of `fleethook receive` |
//! | [`demo`] | `fleethook demo`: the whole pipeline on one machine |
//!
//! Data flows MQTT → [`ingest`] → [`outbox`] (commit, then ack) → [`delivery`] → HTTPS.

pub mod app;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod event;
pub mod format;
pub mod handoff;
pub mod health;
pub mod heartbeat;
pub mod http_server;
pub mod ingest;
pub mod link;
pub mod live;
pub mod logging;
pub mod memory;
pub mod outbox;
pub mod own_file;
pub mod receive;
pub mod route;
pub mod sign;
pub mod status;
pub mod text;

/// Installs the one TLS crypto provider (ring) for rustls; safe to call many times.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

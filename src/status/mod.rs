//! The status socket: how a field tech at the robot sees and repairs the queue.
//!
//! Protocol: one JSON request per line, one JSON response per line.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"result":{…}}
//! → {"cmd":"pause","subscription":"ops"}
//! ← {"ok":false,"error":{"code":"forbidden","message":"…"}}
//! ```
//!
//! Reads (`status`, `queue`, `log`, `show`) open their own read-only SQLite connection.
//! Commands that change state (`retry`, `replay`, `pause`, `resume`, `test`, `emit`) go to
//! the outbox writer or the dispatcher as messages, and are allowed only to root, the
//! agent's own user and members of its group (checked with SO_PEERCRED).

pub mod client;
mod handlers;
pub mod render;
mod server;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use handlers::Context;
pub use server::{bind, serve};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Queue {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Log {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Show {
        id: String,
    },
    Retry {
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        failed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<String>,
    },
    Replay {
        subscription: String,
        since: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    Pause {
        subscription: String,
    },
    Resume {
        subscription: String,
    },
    Test {
        subscription: String,
    },
    Emit {
        #[serde(rename = "type")]
        event_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
}

impl Request {
    /// Whether the command changes state (and so needs a trusted peer).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Request::Status | Request::Queue { .. } | Request::Log { .. } | Request::Show { .. })
    }
}

/// The error half of a response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody { code: code.to_string(), message: message.into() }
    }
}

/// One response line.
pub fn ok_line(result: Value) -> String {
    serde_json::json!({ "ok": true, "result": result }).to_string()
}

pub fn error_line(e: &ErrorBody) -> String {
    serde_json::json!({ "ok": false, "error": e }).to_string()
}

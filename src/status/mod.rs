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
//! Reads (`status`, `queue`, `log`, `show`, `quarantine`, `quarantine_show`) open their
//! own read-only SQLite connection. Commands that change state (`retry`, `replay`,
//! `pause`, `resume`, `link`, `test`, `emit`, `quarantine_release`, `quarantine_purge`) go to the
//! outbox writer or the dispatcher as messages, and are allowed only to root, the agent's
//! own user and members of its group (checked with SO_PEERCRED).

pub mod client;
mod context;
mod handlers;
pub mod metrics;
mod quarantine;
pub mod render;
mod server;
mod waits;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use context::Context;
pub use server::{bind, serve};

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// What `queue` can filter on: the states a delivery row keeps (evicted rows are deleted
/// with their events, so there is nothing to list).
pub const QUEUE_STATES: &[&str] = &["pending", "failed", "delivered", "expired", "superseded"];
/// What `log` can filter on: every outcome an audit row records.
pub const LOG_OUTCOMES: &[&str] = &["delivered", "retry", "offline", "failed", "expired", "evicted", "superseded"];

/// `value` if it is one of `valid`, else a sentence naming them.
pub fn one_of(what: &str, value: Option<&str>, valid: &[&str]) -> Result<(), String> {
    match value {
        Some(v) if !valid.contains(&v) => Err(format!("unknown {what} `{v}`: use one of {}", valid.join(", "))),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// The status as Prometheus text (what `/metrics` serves).
    Metrics,
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
    /// Switch the link profile: `metered` or `unmetered`.
    Link {
        profile: String,
    },
    Resume {
        subscription: String,
    },
    Test {
        subscription: String,
    },
    /// Quarantined messages, newest first.
    Quarantine {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// One quarantined message with its payload.
    QuarantineShow {
        seq: i64,
    },
    /// Route the named quarantined messages (or `all`) again with today's config; those
    /// that now make an event are taken in and leave the quarantine.
    QuarantineRelease {
        #[serde(default)]
        seqs: Vec<i64>,
        #[serde(default)]
        all: bool,
    },
    /// Delete the named quarantined messages (or `all`).
    QuarantinePurge {
        #[serde(default)]
        seqs: Vec<i64>,
        #[serde(default)]
        all: bool,
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
        !matches!(
            self,
            Request::Status
                | Request::Metrics
                | Request::Queue { .. }
                | Request::Log { .. }
                | Request::Show { .. }
                | Request::Quarantine { .. }
                | Request::QuarantineShow { .. }
        )
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

/// Parses a request line as JSON, refusing a key that appears twice in any object: with
/// `{"cmd":"status","cmd":"pause"}` the last one would silently win.
pub fn parse_unique(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let Unique(value) = serde::Deserialize::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A JSON value whose objects have no repeated key.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            let Unique(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_unique(r#"{"cmd":"status"}"#).is_ok());
        let top = parse_unique(r#"{"cmd":"status","cmd":"pause"}"#).unwrap_err();
        assert!(top.to_string().contains("duplicate key `cmd`"), "{top}");
        assert!(parse_unique(r#"{"cmd":"emit","type":"a.b","data":{"x":1,"x":2}}"#).is_err());
        assert!(parse_unique(r#"[{"a":1},{"a":1}]"#).is_ok());
        assert!(parse_unique(r#"{"cmd":"status"} trailing"#).is_err());
        assert_eq!(
            parse_unique(r#"{"n":-1.5,"v":[null,true]}"#).unwrap(),
            serde_json::json!({"n":-1.5,"v":[null,true]})
        );
    }
}

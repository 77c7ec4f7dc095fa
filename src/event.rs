//! The event: ids, types, the patterns subscriptions select them by, and the envelope body
//! that receivers get. No I/O here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A new time-ordered id (UUIDv7) for an event or a delivery.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A stable id for what has an id of its own (a route's `dedupe` pointer): the same
/// `parts` always give the same UUID (version 8, from SHA-256), so an event sent again
/// after a power cut carries the ids the receiver saw the first time.
pub fn derived_id(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as the envelope's `timestamp`.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One subscription an event goes to, and when it expires there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// The `delivery_id`, chosen at ingest: a delivery may be sent before it is stored.
    pub id: String,
    pub subscription: String,
    pub expires_ms: i64,
}

/// Eviction order under the disk cap: low goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    #[default]
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("`{other}` is not a priority (high, normal, low)")),
        }
    }
}

/// Whether an event type is acceptable: dotted words, no spaces or control characters.
pub fn validate_event_type(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("event type is empty".into());
    }
    if t.len() > 128 {
        return Err(format!("event type is {} bytes long (at most 128)", t.len()));
    }
    if let Some(c) = t.chars().find(|c| c.is_whitespace() || c.is_control() || *c == '"') {
        return Err(format!("event type `{t}` contains {c:?}"));
    }
    Ok(())
}

/// A subscription's selector of event types: `*` (everything), `mission.*`, or an exact
/// `mission.completed`. A `*` segment matches one dotted segment; a trailing `*` matches
/// one or more, so `mission.*` takes `mission.completed` and `mission.leg.done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPattern {
    source: String,
    segments: Vec<String>,
}

impl EventPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty event pattern".into());
        }
        let segments: Vec<String> = s.split('.').map(str::to_string).collect();
        for seg in &segments {
            if seg.is_empty() {
                return Err(format!("event pattern `{s}` has an empty segment"));
            }
            if seg.contains('*') && seg != "*" {
                return Err(format!("event pattern `{s}`: `*` must stand alone between dots"));
            }
        }
        Ok(EventPattern { source: s.to_string(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, event_type: &str) -> bool {
        let parts: Vec<&str> = event_type.split('.').collect();
        let n = self.segments.len();
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == n;
            if seg == "*" && last {
                return parts.len() > i;
            }
            match parts.get(i) {
                Some(p) if seg == "*" || seg == p => {}
                _ => return false,
            }
        }
        parts.len() == n
    }
}

impl serde::Serialize for EventPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// What the envelope needs about one event.
#[derive(Clone, Debug)]
pub struct EnvelopeParts<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub created_ms: i64,
    pub device_id: &'a str,
    pub delivery_id: &'a str,
    /// The bridge's JSON object, embedded verbatim (it was validated at ingest).
    pub data: &'a str,
    /// `created_ms` came from a clock not known good and could not be corrected: the
    /// envelope says what that clock was (`"timestamp_quality": "unsynced"` or `"wrong"`).
    pub timestamp_quality: Option<&'static str>,
}

/// The default body: `{"id","type","timestamp","device_id","delivery_id","data"}`.
/// Built by concatenation so the payload is never parsed and re-serialised.
pub fn envelope_body(p: &EnvelopeParts<'_>) -> String {
    let mut out = String::with_capacity(p.data.len() + 200);
    out.push_str("{\"id\":");
    push_json_str(&mut out, p.id);
    out.push_str(",\"type\":");
    push_json_str(&mut out, p.event_type);
    out.push_str(",\"timestamp\":");
    push_json_str(&mut out, &rfc3339_ms(p.created_ms));
    if let Some(quality) = p.timestamp_quality {
        out.push_str(",\"timestamp_quality\":");
        push_json_str(&mut out, quality);
    }
    out.push_str(",\"device_id\":");
    push_json_str(&mut out, p.device_id);
    out.push_str(",\"delivery_id\":");
    push_json_str(&mut out, p.delivery_id);
    out.push_str(",\"data\":");
    out.push_str(p.data);
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's string escaping cannot fail for a &str.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let all = EventPattern::parse("*").unwrap();
        assert!(all.matches("mission.completed"));
        assert!(all.matches("agent.heartbeat"));
        let mission = EventPattern::parse("mission.*").unwrap();
        assert!(mission.matches("mission.completed"));
        assert!(mission.matches("mission.leg.done"));
        assert!(!mission.matches("mission"));
        assert!(!mission.matches("missions.completed"));
        let exact = EventPattern::parse("anomaly.lidar").unwrap();
        assert!(exact.matches("anomaly.lidar"));
        assert!(!exact.matches("anomaly.lidar.blocked"));
        let middle = EventPattern::parse("*.completed").unwrap();
        assert!(middle.matches("mission.completed"));
        assert!(!middle.matches("mission.started"));
        assert!(EventPattern::parse("mission*").is_err());
        assert!(EventPattern::parse("a..b").is_err());
    }

    #[test]
    fn envelope_is_valid_json_with_data_verbatim() {
        let body = envelope_body(&EnvelopeParts {
            id: "e1",
            event_type: "mission.completed",
            created_ms: 1_778_436_271_000,
            device_id: "agv \"7\"",
            delivery_id: "d1",
            data: r#"{"status":"completed","n":1.50}"#,
            timestamp_quality: None,
        });
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "mission.completed");
        assert_eq!(v["device_id"], "agv \"7\"");
        assert_eq!(v["timestamp"], "2026-05-10T18:04:31.000Z");
        assert!(body.ends_with(r#""data":{"status":"completed","n":1.50}}"#));
        assert!(!body.contains("timestamp_quality"), "a true timestamp is not marked");
    }

    #[test]
    fn derived_ids_are_stable_uuid_v8() {
        let a = derived_id(&[b"route", b"m-1"]);
        assert_eq!(a, derived_id(&[b"route", b"m-1"]));
        assert_ne!(a, derived_id(&[b"route", b"m-2"]));
        assert_ne!(derived_id(&[b"ab", b"c"]), derived_id(&[b"a", b"bc"]), "parts are length-prefixed");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 8);
    }

    #[test]
    fn ids_are_uuid_v7_and_ordered() {
        let a = new_id();
        let b = new_id();
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 7);
        assert!(a < b);
    }
}

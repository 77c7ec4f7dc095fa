//! Bodies for Slack incoming webhooks, PagerDuty Events API v2 and Datadog's events API.

use serde_json::{Value, json};

use super::{DEFAULT_SUMMARY, FormatOptions, Rendered, summary};
use crate::event::{EnvelopeParts, rfc3339_ms};

fn data(event: &EnvelopeParts<'_>) -> Value {
    serde_json::from_str(event.data).unwrap_or(Value::Null)
}

fn text(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>, data: &Value) -> String {
    summary(opts.summary.unwrap_or(DEFAULT_SUMMARY), event, data)
}

/// Slack incoming webhook: `{"text": …}`.
pub fn slack(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    Rendered { body: json!({ "text": text(event, opts, &d) }).to_string(), headers: Vec::new() }
}

/// Whether an event type closes an incident (`*.resolved`, `*.cleared`).
pub fn is_resolution(event_type: &str) -> bool {
    event_type.ends_with(".resolved") || event_type.ends_with(".cleared")
}

/// The incident an event belongs to: the payload's own `dedup_key`, else the type without
/// its last segment plus the device, so `anomaly.lidar.raised` and
/// `anomaly.lidar.resolved` on one robot name the same incident.
pub fn incident_key(event: &EnvelopeParts<'_>, data: &Value) -> String {
    if let Some(Value::String(k)) = data.pointer("/dedup_key") {
        return k.clone();
    }
    let stem = event.event_type.rsplit_once('.').map(|(s, _)| s).unwrap_or(event.event_type);
    format!("{stem}/{}", event.device_id)
}

fn severity(event: &EnvelopeParts<'_>, data: &Value) -> &'static str {
    match data.pointer("/severity").and_then(Value::as_str) {
        Some("critical") => "critical",
        Some("error") => "error",
        Some("warning") => "warning",
        Some("info") => "info",
        _ if event.event_type.starts_with("alert.") || event.event_type.starts_with("anomaly.") => "error",
        _ => "info",
    }
}

/// PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`).
pub fn pagerduty(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    let key = incident_key(event, &d);
    let routing_key = opts.routing_key.unwrap_or("");
    let body = if is_resolution(event.event_type) {
        json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": key })
    } else {
        let mut summary = text(event, opts, &d);
        // PagerDuty truncates summaries at 1024 characters; do it on a char boundary.
        if let Some((i, _)) = summary.char_indices().nth(1024) {
            summary.truncate(i);
        }
        json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": summary,
                "source": event.device_id,
                "severity": severity(event, &d),
                "timestamp": rfc3339_ms(event.created_ms),
                "component": event.event_type,
                "custom_details": d,
            }
        })
    };
    Rendered { body: body.to_string(), headers: Vec::new() }
}

/// Datadog events API (`POST /api/v1/events`), authenticated by `DD-API-KEY`.
pub fn datadog(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    let alert_type = match severity(event, &d) {
        "critical" | "error" => "error",
        "warning" => "warning",
        _ if is_resolution(event.event_type) => "success",
        _ => "info",
    };
    let body = json!({
        "title": text(event, opts, &d),
        "text": event.data,
        "tags": [format!("device:{}", event.device_id), format!("event_type:{}", event.event_type), "source:fleethook"],
        "alert_type": alert_type,
        "date_happened": event.created_ms / 1000,
        "aggregation_key": incident_key(event, &d),
        "source_type_name": "fleethook",
    });
    let headers = vec![("DD-API-KEY".to_string(), opts.api_key.unwrap_or("").to_string())];
    Rendered { body: body.to_string(), headers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::parts;

    fn opts() -> FormatOptions<'static> {
        FormatOptions {
            summary: Some("{type} on {device_id}: {/reason}"),
            routing_key: Some("R0UT1NG"),
            api_key: Some("DDKEY"),
        }
    }

    #[test]
    fn slack_is_an_incoming_webhook_text() {
        let r = slack(&parts("alert.estop", r#"{"reason":"bumper"}"#), &opts());
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v, json!({"text": "alert.estop on agv-7: bumper"}));
    }

    #[test]
    fn pagerduty_triggers_and_resolves_the_same_incident() {
        let t: Value = serde_json::from_str(
            &pagerduty(&parts("anomaly.lidar.raised", r#"{"reason":"dust","severity":"warning"}"#), &opts()).body,
        )
        .unwrap();
        assert_eq!(t["routing_key"], "R0UT1NG");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["payload"]["summary"], "anomaly.lidar.raised on agv-7: dust");
        assert_eq!(t["payload"]["source"], "agv-7");
        assert_eq!(t["payload"]["severity"], "warning");
        assert_eq!(t["payload"]["timestamp"], "2026-05-10T18:04:31.000Z");
        assert_eq!(t["payload"]["custom_details"]["reason"], "dust");
        let r: Value = serde_json::from_str(&pagerduty(&parts("anomaly.lidar.resolved", "{}"), &opts()).body).unwrap();
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(r["dedup_key"], t["dedup_key"]);
        assert!(r.get("payload").is_none());
    }

    #[test]
    fn datadog_event_has_title_tags_and_key_header() {
        let r = datadog(&parts("alert.estop", r#"{"reason":"bumper"}"#), &opts());
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["title"], "alert.estop on agv-7: bumper");
        assert_eq!(v["alert_type"], "error");
        assert_eq!(v["date_happened"], 1_778_436_271);
        assert!(v["tags"].as_array().unwrap().contains(&json!("device:agv-7")));
        assert_eq!(r.headers, vec![("DD-API-KEY".to_string(), "DDKEY".to_string())]);
    }
}

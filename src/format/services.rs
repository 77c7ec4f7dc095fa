//! Bodies for Slack incoming webhooks, PagerDuty Events API v2 and Datadog's events API.

use std::borrow::Cow;

use serde_json::{Value, json};
use sha2::Digest;

use super::{DEFAULT_SUMMARY, FormatOptions, Rendered, summary, summary_escaped};
use crate::event::{EnvelopeParts, rfc3339_ms};

fn data(event: &EnvelopeParts<'_>) -> Value {
    serde_json::from_str(event.data).unwrap_or(Value::Null)
}

fn text(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>, data: &Value) -> String {
    summary(opts.summary.unwrap_or(DEFAULT_SUMMARY), event, data)
}

/// Slack incoming webhook: `{"text": …}`. Values from the payload are escaped as Slack
/// documents (`&`, `<`, `>`), so a field holding `<!channel>` cannot ping a channel; the
/// template's own text may use Slack's markup.
pub fn slack(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    let text = summary_escaped(opts.summary.unwrap_or(DEFAULT_SUMMARY), event, &d, slack_escape);
    Rendered { body: json!({ "text": text }).to_string(), headers: Vec::new() }
}

fn slack_escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))
}

/// The last segment of a type that names an incident's phase, not the incident.
const OPENING: &[&str] = &["raised", "triggered", "detected", "active", "started", "opened"];
const CLOSING: &[&str] = &["resolved", "cleared"];

/// Whether an event closes an incident: its type ends in `.resolved` or `.cleared`, or its
/// payload says so in `phase`, `state` or `status`.
pub fn is_resolution(event_type: &str, data: &Value) -> bool {
    let last = event_type.rsplit('.').next().unwrap_or(event_type);
    CLOSING.contains(&last)
        || ["/phase", "/state", "/status"]
            .iter()
            .any(|p| data.pointer(p).and_then(Value::as_str).is_some_and(|v| CLOSING.contains(&v)))
}

/// The incident an event belongs to: the payload's own `dedup_key`, else the type without
/// a phase segment plus the device, so `anomaly.lidar.raised` and `anomaly.lidar.resolved`
/// on one robot name the same incident. At most `max` bytes (a vendor's limit): a longer
/// key keeps its start and gains a hash of the whole, so it stays distinct and stable.
pub fn incident_key(event: &EnvelopeParts<'_>, data: &Value, max: usize) -> String {
    let key = match data.pointer("/dedup_key") {
        Some(Value::String(k)) => k.clone(),
        _ => {
            let stem = match event.event_type.rsplit_once('.') {
                Some((stem, last)) if OPENING.contains(&last) || CLOSING.contains(&last) => stem,
                _ => event.event_type,
            };
            format!("{stem}/{}", event.device_id)
        }
    };
    if key.len() <= max {
        return key;
    }
    let hash = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8]);
    format!("{}~{hash}", cut(&key, max - hash.len() - 1))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn severity(event: &EnvelopeParts<'_>, data: &Value) -> &'static str {
    if event.event_type == super::TEST_EVENT {
        return "info";
    }
    match data.pointer("/severity").and_then(Value::as_str) {
        Some("critical") => "critical",
        Some("error") => "error",
        Some("warning") => "warning",
        Some("info") => "info",
        _ if event.event_type.starts_with("alert.") || event.event_type.starts_with("anomaly.") => "error",
        _ => "info",
    }
}

/// PagerDuty's documented limit on `dedup_key`.
const PAGERDUTY_KEY_MAX: usize = 255;

/// PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`).
pub fn pagerduty(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    let key = incident_key(event, &d, PAGERDUTY_KEY_MAX);
    let routing_key = opts.routing_key.unwrap_or("");
    let body = if is_resolution(event.event_type, &d) {
        json!({ "routing_key": routing_key, "event_action": "resolve", "dedup_key": key })
    } else {
        // PagerDuty truncates summaries at 1024 characters; do it on a char boundary.
        let mut summary = text(event, opts, &d);
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

/// Datadog's documented limits: `text` characters, `aggregation_key` length, and how old
/// `date_happened` may be (18 h; a margin is kept for the two clocks' difference).
const DATADOG_TEXT_MAX: usize = 4000;
const DATADOG_KEY_MAX: usize = 100;
const DATADOG_OLDEST_MS: i64 = (18 * 3600 - 300) * 1000;

/// Datadog events API (`POST /api/v1/events`), authenticated by `DD-API-KEY`. An event
/// older than Datadog accepts (after an outage) is dated at send time, and its text
/// begins with when it truly happened.
pub fn datadog(event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let d = data(event);
    let alert_type = match severity(event, &d) {
        _ if is_resolution(event.event_type, &d) => "success",
        "critical" | "error" => "error",
        "warning" => "warning",
        _ => "info",
    };
    let too_old = opts.now_ms - event.created_ms > DATADOG_OLDEST_MS;
    let (date_ms, mut text_body) = if too_old {
        (opts.now_ms, format!("Happened at {} (sent late).\n{}", rfc3339_ms(event.created_ms), event.data))
    } else {
        (event.created_ms, event.data.to_string())
    };
    if let Some((i, _)) = text_body.char_indices().nth(DATADOG_TEXT_MAX - 1) {
        text_body.truncate(i);
        text_body.push('…');
    }
    let body = json!({
        "title": text(event, opts, &d),
        "text": text_body,
        "tags": [format!("device:{}", event.device_id), format!("event_type:{}", event.event_type), "source:fleethook"],
        "alert_type": alert_type,
        "date_happened": date_ms / 1000,
        "aggregation_key": incident_key(event, &d, DATADOG_KEY_MAX),
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
            now_ms: 1_778_436_271_000 + 60_000,
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

    #[test]
    fn a_resolution_is_a_success_in_datadog_and_a_resolve_in_pagerduty() {
        for (t, data) in [
            ("anomaly.lidar", r#"{"kind":"lidar","phase":"resolved"}"#),
            ("anomaly.lidar.resolved", "{}"),
            ("alert.estop.cleared", r#"{"severity":"critical"}"#),
        ] {
            let v: Value = serde_json::from_str(&datadog(&parts(t, data), &opts()).body).unwrap();
            assert_eq!(v["alert_type"], "success", "{t} {data}");
            let p: Value = serde_json::from_str(&pagerduty(&parts(t, data), &opts()).body).unwrap();
            assert_eq!(p["event_action"], "resolve", "{t} {data}");
        }
        let raised: Value =
            serde_json::from_str(&datadog(&parts("anomaly.lidar", r#"{"phase":"raised"}"#), &opts()).body).unwrap();
        let resolved: Value =
            serde_json::from_str(&datadog(&parts("anomaly.lidar", r#"{"phase":"resolved"}"#), &opts()).body).unwrap();
        assert_eq!(raised["alert_type"], "error");
        assert_eq!(raised["aggregation_key"], resolved["aggregation_key"], "one incident");
        assert_eq!(raised["aggregation_key"], "anomaly.lidar/agv-7");
    }

    #[test]
    fn slack_escapes_what_the_payload_says_but_not_the_template() {
        let o = FormatOptions { summary: Some("<!here> {/reason}"), ..opts() };
        let v: Value =
            serde_json::from_str(&slack(&parts("alert.x", r#"{"reason":"<!channel> & <b>"}"#), &o).body).unwrap();
        assert_eq!(v["text"], "<!here> &lt;!channel&gt; &amp; &lt;b&gt;");
    }

    #[test]
    fn vendor_limits_are_kept() {
        let long = "k".repeat(400);
        let data = format!(r#"{{"dedup_key":"{long}","note":"{}"}}"#, "é".repeat(5000));
        let p: Value = serde_json::from_str(&pagerduty(&parts("alert.x", &data), &opts()).body).unwrap();
        let key = p["dedup_key"].as_str().unwrap();
        assert_eq!(key.len(), 255);
        let other = format!(r#"{{"dedup_key":"{long}x"}}"#);
        let q: Value = serde_json::from_str(&pagerduty(&parts("alert.x", &other), &opts()).body).unwrap();
        assert_ne!(q["dedup_key"].as_str().unwrap(), key, "two long keys stay distinct");
        let d: Value = serde_json::from_str(&datadog(&parts("alert.x", &data), &opts()).body).unwrap();
        assert_eq!(d["aggregation_key"].as_str().unwrap().len(), 100);
        assert_eq!(d["text"].as_str().unwrap().chars().count(), 4000);
        // Two days late: dated at send time, the true time in the text.
        let late = FormatOptions { now_ms: 1_778_436_271_000 + 48 * 3600 * 1000, ..opts() };
        let d: Value = serde_json::from_str(&datadog(&parts("alert.x", "{}"), &late).body).unwrap();
        assert_eq!(d["date_happened"], late.now_ms / 1000);
        assert!(d["text"].as_str().unwrap().starts_with("Happened at 2026-05-10T18:04:31.000Z"), "{d}");
    }
}

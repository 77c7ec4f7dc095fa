//! Request bodies. `envelope` (the default) is for endpoints that take our JSON; `slack`,
//! `pagerduty` and `datadog` shape the event for those services' documented APIs.

mod services;

use serde::Serialize;

use crate::event::{EnvelopeParts, envelope_body};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Envelope,
    Slack,
    Pagerduty,
    Datadog,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "envelope" => Ok(Format::Envelope),
            "slack" => Ok(Format::Slack),
            "pagerduty" => Ok(Format::Pagerduty),
            "datadog" => Ok(Format::Datadog),
            o => Err(format!("`{o}` is not a format (envelope, slack, pagerduty, datadog)")),
        }
    }
}

/// What a format adds to a request besides the body.
#[derive(Debug, Default)]
pub struct Rendered {
    pub body: String,
    pub headers: Vec<(String, String)>,
}

/// Per-subscription settings the service formats need.
#[derive(Debug, Default, Clone)]
pub struct FormatOptions<'a> {
    pub summary: Option<&'a str>,
    pub routing_key: Option<&'a str>,
    pub api_key: Option<&'a str>,
    /// The wall clock at send time (Unix ms): Datadog refuses events dated too long ago.
    pub now_ms: i64,
}

pub const DEFAULT_SUMMARY: &str = "{type} on {device_id}";

/// The event `fleethook test` sends.
pub const TEST_EVENT: &str = "fleethook.test";
/// Its text in every format, whatever the subscription's `summary`: a test rendered
/// through `"Mission {/mission_id} failed on {device_id}"` posted a fake failure alert.
pub const TEST_SUMMARY: &str = "fleethook test event from {device_id}: a connectivity check, not an incident";

pub fn render(format: Format, event: &EnvelopeParts<'_>, opts: &FormatOptions<'_>) -> Rendered {
    let test_opts;
    let opts = if event.event_type == TEST_EVENT {
        test_opts = FormatOptions { summary: Some(TEST_SUMMARY), ..opts.clone() };
        &test_opts
    } else {
        opts
    };
    match format {
        Format::Envelope => Rendered { body: envelope_body(event), headers: Vec::new() },
        Format::Slack => services::slack(event, opts),
        Format::Pagerduty => services::pagerduty(event, opts),
        Format::Datadog => services::datadog(event, opts),
    }
}

/// Fills `{type}`, `{device_id}`, `{id}`, `{timestamp}` and `{/json/pointer}` into the
/// event's data. Unknown or missing placeholders render as `?` rather than failing a
/// delivery over a cosmetic string.
pub fn summary(template: &str, event: &EnvelopeParts<'_>, data: &serde_json::Value) -> String {
    summary_escaped(template, event, data, |s| s.into())
}

/// [`summary`], with every filled-in value passed through `escape` (the template's own
/// text is the operator's, and kept as written).
pub fn summary_escaped(
    template: &str,
    event: &EnvelopeParts<'_>,
    data: &serde_json::Value,
    escape: impl Fn(&str) -> std::borrow::Cow<'_, str>,
) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &rest[open + 1..open + close];
        match key {
            "type" => out.push_str(&escape(event.event_type)),
            "device_id" => out.push_str(&escape(event.device_id)),
            "id" => out.push_str(&escape(event.id)),
            "timestamp" => out.push_str(&crate::event::rfc3339_ms(event.created_ms)),
            p if p.starts_with('/') => match data.pointer(p) {
                Some(serde_json::Value::String(s)) => out.push_str(&escape(s)),
                Some(v) => out.push_str(&escape(&v.to_string())),
                None => out.push('?'),
            },
            _ => out.push('?'),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn parts<'a>(event_type: &'a str, data: &'a str) -> EnvelopeParts<'a> {
        EnvelopeParts {
            id: "0193b2c4-0000-7000-8000-000000000001",
            event_type,
            created_ms: 1_778_436_271_000,
            device_id: "agv-7",
            delivery_id: "0193b2c4-0000-7000-8000-000000000002",
            data,
            timestamp_quality: None,
        }
    }

    /// A test event says it is a test in every format, whatever the subscription's
    /// summary: never "Mission ? failed on agv-7: ?" in a real channel.
    #[test]
    fn a_test_event_says_it_is_a_test_in_every_format() {
        let data = r#"{"message":"a test event from fleethook","subscription":"ops"}"#;
        let p = parts(TEST_EVENT, data);
        let opts = FormatOptions {
            summary: Some("Mission {/mission_id} failed on {device_id}: {/reason}"),
            routing_key: Some("R"),
            api_key: Some("K"),
            now_ms: 1_778_436_271_000,
        };
        for format in [Format::Slack, Format::Pagerduty, Format::Datadog] {
            let body: serde_json::Value = serde_json::from_str(&render(format, &p, &opts).body).unwrap();
            let text = match format {
                Format::Slack => body["text"].as_str(),
                Format::Pagerduty => body["payload"]["summary"].as_str(),
                _ => body["title"].as_str(),
            }
            .unwrap();
            assert!(text.contains("fleethook test event") && !text.contains("failed"), "{format:?}: {text}");
        }
        let pd: serde_json::Value = serde_json::from_str(&render(Format::Pagerduty, &p, &opts).body).unwrap();
        assert_eq!(pd["payload"]["severity"], "info");
    }

    #[test]
    fn summary_fills_placeholders() {
        let data = json!({"name": "dock 4", "n": 2});
        let p = parts("mission.completed", "{}");
        assert_eq!(
            summary("{type} on {device_id}: {/name} ({/n})", &p, &data),
            "mission.completed on agv-7: dock 4 (2)"
        );
        assert_eq!(summary("{/missing} {nope} {", &p, &data), "? ? {");
    }
}

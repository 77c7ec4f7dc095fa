//! Warnings `check` prints (and the agent logs at start) for a config that loads but
//! probably does not do what its author meant: no routes, or a subscription pattern that
//! no route can produce (`misson.*`). Pure: the config in, key paths and sentences out.

use super::Config;
use super::locate::KeyPath;
use crate::event::EventPattern;

/// Event types the agent makes itself, whatever the routes.
const BUILT_IN: &[&str] = &["agent.heartbeat", "fleethook.test"];

pub fn warnings(config: &Config) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    if config.routes.is_empty() {
        out.push((
            KeyPath::root(),
            "no [[route]] is configured: nothing is taken from MQTT (only heartbeats and `fleethook emit` events go out)"
                .to_string(),
        ));
    }
    if config.mqtt.version != 5 {
        for (i, route) in config.routes.iter().enumerate() {
            let templates = [("event", Some(&route.event)), ("device_id", route.device_id.as_ref())];
            for (key, template) in templates {
                if template.is_some_and(|t| t.as_str().contains("{prop.")) {
                    out.push((
                        KeyPath::root().key("route").index(i).key(key),
                        "`{prop.…}` reads MQTT 5 user properties, which MQTT 3.1.1 messages never have: set [mqtt] version = 5".to_string(),
                    ));
                }
            }
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let Some(pointer) = route.dedupe.as_deref() else { continue };
        let templates = [("event", Some(&route.event)), ("device_id", route.device_id.as_ref())];
        for (key, template) in templates {
            if template.is_some_and(|t| reads_pointer(t.as_str(), pointer)) {
                out.push((
                    KeyPath::root().key("route").index(i).key("dedupe"),
                    format!(
                        "`{pointer}` is read by this route's {key} template too: every message of one {key} shares it, so all but the first are dropped as duplicates; point dedupe at a per-message id"
                    ),
                ));
            }
        }
    }
    let templates: Vec<&str> = config.routes.iter().map(|r| r.event.as_str()).collect();
    for (i, sub) in config.subscriptions.iter().enumerate() {
        for (j, pattern) in sub.events.iter().enumerate() {
            let reachable =
                BUILT_IN.iter().any(|t| pattern.matches(t)) || templates.iter().any(|t| may_match(pattern, t));
            if !reachable && !config.routes.is_empty() {
                out.push((
                    KeyPath::root().key("subscription").index(i).key("events").index(j),
                    format!(
                        "`{}` matches no event type a route makes ({}): only `fleethook emit` could feed it",
                        pattern.as_str(),
                        templates.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, sub) in config.subscriptions.iter().enumerate().filter(|(_, s)| s.enabled) {
        let at = KeyPath::root().key("subscription").index(i);
        if let Some(why) = placeholder_url(&sub.url_full.0) {
            out.push((
                at.key("url"),
                format!(
                    "`{}` is {why}: its events go nowhere; put the endpoint's own URL, or set enabled = false",
                    sub.url
                ),
            ));
        }
        for (key, secret) in [("routing_key", &sub.routing_key), ("api_key", &sub.api_key)] {
            if secret.as_ref().is_some_and(|s| placeholder_key(s.expose())) {
                out.push((
                    at.key(key),
                    format!(
                        "{key} is the shipped config's placeholder: put the service's own key, or set enabled = false"
                    ),
                ));
            }
        }
    }
    for (i, dir) in config.ros.msg_path.iter().enumerate() {
        if !dir.is_dir() {
            out.push((
                KeyPath::root().key("ros").key("msg_path").index(i),
                format!("{} is not a directory here: ROS 2 types cannot be looked up in it", dir.display()),
            ));
        }
    }
    out
}

/// Why a subscription URL is a documentation placeholder, if it is one: a host reserved
/// for examples (RFC 2606), or the Slack webhook of the docs (`T000…`).
fn placeholder_url(url: &reqwest::Url) -> Option<&'static str> {
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let reserved = ["example.com", "example.org", "example.net", "example", "invalid", "test", "localhost.example"];
    if reserved.iter().any(|r| host == *r || host.ends_with(&format!(".{r}"))) {
        return Some("a host reserved for examples");
    }
    if host == "hooks.slack.com" && url.path().starts_with("/services/T000") {
        return Some("the documentation's Slack webhook");
    }
    None
}

/// Whether a service key is the shipped config's placeholder (`R0UT1NGKEY000…`, or all
/// zeros), or counts up as the Datadog example does (`0123456789abcdef…`).
fn placeholder_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    lower.starts_with("r0ut1ngkey") || lower.chars().all(|c| c == '0') || lower.starts_with("0123456789abcdef")
}

/// Whether `template` has a placeholder reading `pointer` or a value inside it.
fn reads_pointer(template: &str, pointer: &str) -> bool {
    template
        .match_indices(&format!("{{{pointer}"))
        .any(|(at, m)| matches!(template[at + m.len()..].chars().next(), Some('}') | Some('/')))
}

/// Whether some event type a route's `event` template renders could match `pattern`.
/// A placeholder (`{/status}`) may render anything, so only the literal text before the
/// first placeholder is compared with the pattern's before its first `*`.
fn may_match(pattern: &EventPattern, template: &str) -> bool {
    let p = pattern.as_str();
    let Some(open) = template.find('{') else { return pattern.matches(template) };
    let fixed = &template[..open];
    let p_fixed = p.find('*').map_or(p, |i| &p[..i]);
    p_fixed.starts_with(fixed) || fixed.starts_with(p_fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedupe_pointer_the_event_type_reads_is_a_warning() {
        let said = |dedupe: &str| -> Vec<String> {
            let src = format!("[[route]]\ntopic = \"a/#\"\nevent = \"mission.{{/status}}\"\ndedupe = \"{dedupe}\"\n");
            let config = Config::parse(&src, std::path::Path::new("t.toml")).unwrap();
            warnings(&config).into_iter().map(|(k, m)| format!("{k}: {m}")).collect()
        };
        let warned = said("/status");
        assert!(
            warned.iter().any(|w| w.starts_with("route[0].dedupe: `/status` is read by this route's event")),
            "{warned:?}"
        );
        assert!(said("/event_id").iter().all(|w| !w.contains("dedupe")));
        assert!(
            said("/stat").iter().all(|w| !w.contains("dedupe")),
            "a pointer that only shares a prefix is another field"
        );
    }

    #[test]
    fn user_properties_without_mqtt5_are_a_warning() {
        let src = "[[route]]\ntopic = \"a/#\"\nevent = \"robot.{prop.kind}\"\n";
        let said = |version: &str| -> Vec<String> {
            let config = Config::parse(&format!("[mqtt]\n{version}\n{src}"), std::path::Path::new("t.toml")).unwrap();
            warnings(&config).into_iter().map(|(k, m)| format!("{k}: {m}")).collect()
        };
        let v311 = said("");
        assert!(v311.iter().any(|w| w.starts_with("route[0].event: `{prop.…}` reads MQTT 5")), "{v311:?}");
        assert!(said("version = 5").iter().all(|w| !w.contains("prop.")));
    }

    #[test]
    fn placeholders_of_the_shipped_config_are_warnings_on_enabled_subscriptions() {
        let said = |sub: &str| -> Vec<String> {
            let src = format!(
                "[ros]\nmsg_path = [\"/nonexistent/share\"]\n[[subscription]]\nname = \"s\"\nevents = [\"*\"]\nsignature = \"none\"\n{sub}\n"
            );
            let config = Config::parse(&src, std::path::Path::new("t.toml")).unwrap();
            warnings(&config).into_iter().map(|(k, m)| format!("{k}: {m}")).collect()
        };
        let slack = said("url = \"https://hooks.slack.com/services/T000/B000/XXXX\"\nformat = \"slack\"");
        assert!(
            slack.iter().any(|w| w.starts_with("subscription[0].url:") && w.contains("Slack webhook")),
            "{slack:?}"
        );
        assert!(
            slack.iter().any(|w| w.starts_with("ros.msg_path[0]: /nonexistent/share is not a directory")),
            "{slack:?}"
        );
        let example = said("url = \"https://hooks.Example.com:8443/fleet\"");
        assert!(example.iter().any(|w| w.contains("reserved for examples")), "{example:?}");
        let pager = said(
            "url = \"https://events.pagerduty.com/v2/enqueue\"\nformat = \"pagerduty\"\nrouting_key = \"R0UT1NGKEY00000000000000000000000\"",
        );
        assert!(
            pager.iter().any(|w| w.starts_with("subscription[0].routing_key: routing_key is the shipped")),
            "{pager:?}"
        );
        let real = said(
            "url = \"https://hooks.fleet.acme.io/in\"\nformat = \"pagerduty\"\nrouting_key = \"e93facc04764012d7bfb002500d5d1a6\"",
        );
        assert!(real.iter().all(|w| !w.starts_with("subscription")), "{real:?}");
        let off = said("url = \"https://hooks.example.com/fleet\"\nenabled = false");
        assert!(off.iter().all(|w| !w.starts_with("subscription")), "a disabled subscription sends nothing: {off:?}");
    }

    #[test]
    fn the_example_secret_is_a_warning_for_check_and_refused_by_run() {
        let src = |enabled: bool| {
            format!(
                "[[subscription]]\nname = \"s\"\nurl = \"https://hooks.fleet.acme.io/in\"\nevents = [\"*\"]\nsecret = \"{}\"\nenabled = {enabled}\n",
                crate::config::secret::EXAMPLE
            )
        };
        let config = Config::parse(&src(true), std::path::Path::new("t.toml")).unwrap();
        let refused: Vec<String> = config.refused_by_run.iter().map(|e| e.to_string()).collect();
        assert!(
            refused.len() == 1
                && refused[0].contains("t.toml:5: subscription[0].secret: the documentation's example secret"),
            "{refused:?}"
        );
        assert!(config.warnings.iter().any(|w| w.message.contains("example secret")));
        let off = Config::parse(&src(false), std::path::Path::new("t.toml")).unwrap();
        assert!(off.refused_by_run.is_empty(), "a disabled subscription signs nothing");
    }

    fn pat(s: &str) -> EventPattern {
        EventPattern::parse(s).unwrap()
    }

    #[test]
    fn a_pattern_is_reachable_when_a_template_could_render_a_match() {
        assert!(may_match(&pat("mission.*"), "mission.{/status}"));
        assert!(may_match(&pat("mission.completed"), "mission.{/status}"));
        assert!(may_match(&pat("*"), "{/kind}"));
        assert!(may_match(&pat("anomaly.lidar.*"), "anomaly.{/kind}.raised"));
        assert!(may_match(&pat("alert.estop"), "alert.estop"));
        assert!(!may_match(&pat("misson.*"), "mission.{/status}"));
        assert!(!may_match(&pat("alert.*"), "alert"));
        assert!(!may_match(&pat("alert.estop"), "alert.bumper"));
    }
}

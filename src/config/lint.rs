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
    out
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

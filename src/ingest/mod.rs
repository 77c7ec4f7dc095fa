//! Ingest: MQTT messages in, outbox records out. The [`Router`] is the pure part (which
//! route, which event, which subscriptions, or which quarantine reason); `mqtt` is the
//! rumqttc loop around it.

pub mod breaker;
pub mod budget;
pub mod mqtt;
pub mod payload;
pub mod ros;
pub mod session;
pub mod side;
mod subscribe;

use serde_json::Value;

use crate::config::{Config, PayloadFormat, Retained, RouteConfig};
use crate::event::{derived_id, new_id, validate_event_type};
use crate::outbox::content_key;
use crate::outbox::{Inbound, NewEvent, QUARANTINE_KEEP, Quarantined};

/// What an MQTT 5 message carries beside its payload (none with 3.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// Feeds a route's `payload = "auto"`.
    pub content_type: Option<String>,
    /// The message expiry interval: caps the event's TTL.
    pub expiry: Option<std::time::Duration>,
    /// For templates: `{prop.NAME}`.
    pub user: Vec<(String, String)>,
}

/// Routes and subscriptions, compiled for ingest.
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<RouteConfig>,
    subscriptions: Vec<crate::config::Subscription>,
    device_id: String,
    max_payload: usize,
    ros: ros::RosTypes,
    /// How long a `payload = "ros"` message waits for its topic's type.
    pub type_wait: std::time::Duration,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Router {
            routes: config.routes.clone(),
            subscriptions: config.subscriptions.clone(),
            device_id: config.device_id.clone(),
            max_payload: config.mqtt.max_payload as usize,
            ros: ros::RosTypes::new(config.ros.msg_path.clone()),
            type_wait: config.ros.type_wait,
        }
    }

    /// With the ROS types an agent has learnt (they outlive a reload).
    pub fn with_ros_types(mut self, types: ros::RosTypes) -> Self {
        self.ros = types;
        self
    }

    fn route(&self, topic: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.topic.matches(topic))
    }

    /// The type topics of `payload = "ros"` routes (ika mqtt_client's
    /// `mqtt_client/ros_msg_type/<topic>`).
    pub fn type_filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.routes.iter().filter(|r| r.payload == PayloadFormat::Ros) {
            let f = format!("{}{}", ros::TYPE_TOPIC_PREFIX, r.topic.as_str());
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// A type announcement for a `payload = "ros"` route, not a message to route.
    pub fn is_type_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix(ros::TYPE_TOPIC_PREFIX)
            .and_then(|t| self.route(t))
            .is_some_and(|r| r.payload == PayloadFormat::Ros)
    }

    /// Learns a topic's type from its announcement (see [`ros::RosTypes::learn`]).
    pub fn learn_type(&self, type_topic: &str, payload: &[u8]) -> Result<Option<(String, String)>, String> {
        self.ros.learn(type_topic, payload)
    }

    /// A message of a `payload = "ros"` route whose type has not been announced yet (an
    /// announcement that could not be used counts: its messages are quarantined at once).
    pub fn awaits_type(&self, topic: &str) -> bool {
        self.route(topic).is_some_and(|r| r.payload == PayloadFormat::Ros) && !self.ros.announced(topic)
    }

    /// The distinct topic filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            if !out.iter().any(|f| f == r.topic.as_str()) {
                out.push(r.topic.as_str().to_string());
            }
        }
        out
    }

    /// Turns one message into what the outbox stores. Never fails: what cannot become an
    /// event is quarantined with the reason.
    /// `now_ms` dates the event (wall clock); `sched_ms` starts its TTL (schedule clock).
    pub fn inbound(&self, topic: &str, payload: &[u8], dup: bool, now_ms: i64, sched_ms: i64) -> Inbound {
        self.inbound_with(topic, payload, dup, now_ms, sched_ms, &Properties::default())
    }

    /// [`Router::inbound`] for a message with MQTT 5 properties.
    pub fn inbound_with(
        &self,
        topic: &str,
        payload: &[u8],
        dup: bool,
        now_ms: i64,
        sched_ms: i64,
        props: &Properties,
    ) -> Inbound {
        let Some((idx, route)) = self.routes.iter().enumerate().find(|(_, r)| r.topic.matches(topic)) else {
            return Inbound::Nothing;
        };
        // Kept whole when it could become an event after a route fix (`quarantine
        // release`); of an oversize payload only its start, to show what it was.
        let kept = if payload.len() <= self.max_payload { payload.len() } else { QUARANTINE_KEEP };
        let quarantine = |reason: String| {
            Inbound::Quarantine(Quarantined {
                topic: topic.to_string(),
                reason,
                size: payload.len(),
                payload: payload[..kept.min(payload.len())].to_vec(),
            })
        };
        if payload.len() > self.max_payload {
            return quarantine(format!(
                "payload of {} bytes is over mqtt.max_payload ({} bytes)",
                payload.len(),
                self.max_payload
            ));
        }
        let decoded = match route.payload {
            PayloadFormat::Ros => self.ros.decode(topic, payload).map(payload::Decoded::of),
            format => payload::decode(format, payload, props.content_type.as_deref()),
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(reason) => return quarantine(reason),
        };
        let value = &decoded.value;
        let where_ = format!("route[{idx}] ({})", route.topic.as_str());
        let event_type = match route.event.render(topic, value, &props.user) {
            Ok(t) => t,
            Err(e) => return quarantine(format!("{where_}: event type: {e}")),
        };
        if let Err(e) = validate_event_type(&event_type) {
            return quarantine(format!("{where_}: {e}"));
        }
        let device_id = match &route.device_id {
            Some(t) => match t.render(topic, value, &props.user) {
                Ok(d) => d,
                Err(e) => return quarantine(format!("{where_}: device_id: {e}")),
            },
            None => match value.get("device_id") {
                Some(Value::String(d)) if !d.is_empty() => d.clone(),
                _ => self.device_id.clone(),
            },
        };
        let own_id = route.dedupe.as_ref().and_then(|p| match value.pointer(p) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ Value::Number(_)) => Some(v.to_string()),
            _ => None,
        });
        let mut deliveries = crate::config::deliveries(&self.subscriptions, &event_type, route.ttl, sched_ms);
        // The publisher's own expiry wins when it is sooner than the TTL.
        if let Some(expiry) = props.expiry {
            let by = sched_ms.saturating_add(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX));
            deliveries.iter_mut().for_each(|d| d.expires_ms = d.expires_ms.min(by));
        }
        let (id, dedupe_key, dedupe_check) = match own_id {
            Some(own) => {
                // The payload's own id fixes the event's and its deliveries' ids: sent
                // again after a power cut, it carries the ids the receiver already saw.
                // The id is scoped by route, device and event type, so only a real
                // redelivery matches: a `dedupe` pointed at a mission id must not merge
                // `mission.started` and `mission.completed`, or two robots' mission m-1.
                let scope = dedupe_scope(route.topic.as_str(), &device_id, &event_type);
                let id = derived_id(&[scope.as_bytes(), own.as_bytes()]);
                for d in &mut deliveries {
                    d.id = derived_id(&[id.as_bytes(), d.subscription.as_bytes()]);
                }
                (id, content_key(&scope, own.as_bytes()), true)
            }
            None => (new_id(), content_key(topic, payload), dup),
        };
        Inbound::Event(NewEvent {
            id,
            deliveries,
            event_type,
            device_id,
            created_ms: now_ms,
            taken_ms: sched_ms,
            clock: None,
            topic: topic.to_string(),
            // A JSON payload is kept as it came; a decoded one as its JSON.
            data: match decoded.verbatim {
                true => String::from_utf8_lossy(payload).into_owned(),
                false => decoded.value.to_string(),
            },
            priority: route.priority,
            collapse: route.collapse,
            dedupe_key: Some(dedupe_key),
            dedupe_check,
            retained_key: None,
        })
    }

    /// `payload` on `topic` quarantined as it is, without decoding it (see
    /// [`breaker`]); nothing for a topic no route takes.
    pub fn quarantine_unread(&self, topic: &str, payload: &[u8], reason: String) -> Inbound {
        if self.route(topic).is_none() && !self.is_type_topic(topic) {
            return Inbound::Nothing;
        }
        let kept = if payload.len() <= self.max_payload { payload.len() } else { QUARANTINE_KEEP.min(payload.len()) };
        Inbound::Quarantine(Quarantined {
            topic: topic.to_string(),
            reason,
            size: payload.len(),
            payload: payload[..kept].to_vec(),
        })
    }

    /// What becomes of a message the broker marked retained, by its route's `retained`:
    /// dropped (`ignore`), taken as is (`always`), or taken once per topic and content
    /// (`once`), also checked against the dedupe window, which holds the live copy of
    /// a message that came while we were connected.
    pub fn retained(&self, topic: &str, inbound: Inbound) -> Inbound {
        let Some(route) = self.route(topic) else { return inbound };
        match (route.retained, inbound) {
            (Retained::Ignore, _) => Inbound::Nothing,
            (Retained::Once, Inbound::Event(mut e)) => {
                e.retained_key = e.dedupe_key;
                e.dedupe_check = true;
                Inbound::Event(e)
            }
            (_, other) => other,
        }
    }
}

/// What a route's `dedupe` id is unique within: the route, the device and the event
/// type. Each part is length-prefixed, so no two triples give the same scope.
fn dedupe_scope(route: &str, device_id: &str, event_type: &str) -> String {
    format!("route:{}:{route}|{}:{device_id}|{}:{event_type}", route.len(), device_id.len(), event_type.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router() -> Router {
        let c = Config::parse(
            r#"
device_id = "robot-0"
[mqtt]
max_payload = "1KiB"
[[route]]
topic = "fleet/+/mission"
event = "mission.{/status}"
device_id = "{topic.1}"
dedupe = "/mission_id"
[[route]]
topic = "fleet/+/alert"
event = "alert.raised"
[[subscription]]
name = "missions"
url = "https://example.com/a"
events = ["mission.*"]
signature = "none"
[[subscription]]
name = "all"
url = "https://example.com/b"
signature = "none"
max_age = "1h"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        Router::new(&c)
    }

    fn reason(i: Inbound) -> String {
        match i {
            Inbound::Quarantine(q) => q.reason,
            other => panic!("expected quarantine, got {other:?}"),
        }
    }

    #[test]
    fn a_mission_fans_out_to_matching_subscriptions() {
        let Inbound::Event(e) =
            router().inbound("fleet/agv-3/mission", br#"{"status":"completed","mission_id":"m1"}"#, false, 1000, 1000)
        else {
            panic!()
        };
        assert_eq!((e.event_type.as_str(), e.device_id.as_str()), ("mission.completed", "agv-3"));
        let subs: Vec<_> = e.deliveries.iter().map(|d| d.subscription.as_str()).collect();
        assert_eq!(subs, ["missions", "all"]);
        assert_eq!(e.deliveries[1].expires_ms, 1000 + 3_600_000);
        assert!(e.dedupe_check, "a payload id is always checked");
        let Inbound::Event(again) =
            router().inbound("fleet/agv-3/mission", br#"{"status":"completed","mission_id":"m1"}"#, true, 2000, 2000)
        else {
            panic!()
        };
        assert_eq!(again.id, e.id, "the payload's own id fixes the event id");
        assert_eq!(again.deliveries[0].id, e.deliveries[0].id, "and the delivery ids");
        assert_ne!(e.deliveries[0].id, e.deliveries[1].id);
    }

    #[test]
    fn a_dedupe_id_only_matches_the_same_route_device_and_event_type() {
        let r = router();
        let id = |topic: &str, payload: &[u8]| match r.inbound(topic, payload, false, 0, 0) {
            Inbound::Event(e) => (e.id, e.dedupe_key),
            other => panic!("expected an event, got {other:?}"),
        };
        let started = id("fleet/agv-3/mission", br#"{"status":"started","mission_id":"m-0001"}"#);
        let completed = id("fleet/agv-3/mission", br#"{"status":"completed","mission_id":"m-0001"}"#);
        let other_robot = id("fleet/agv-4/mission", br#"{"status":"started","mission_id":"m-0001"}"#);
        let again = id("fleet/agv-3/mission", br#"{"status":"started","mission_id":"m-0001","extra":1}"#);
        assert_ne!(started, completed, "another event type of the same mission is another event");
        assert_ne!(started, other_robot, "another robot's mission of the same id is another event");
        assert_eq!(started, again, "the same id, device and type is the same event");
    }

    #[test]
    fn the_shipped_config_keeps_every_mission_event() {
        let shipped = include_str!("../../config/fleethook.toml");
        let r = Router::new(&Config::parse(shipped, Path::new("config/fleethook.toml")).unwrap());
        let sent = [
            ("fleet/agv-1/mission", r#"{"event_id":"e1","mission_id":"m-0001","status":"started"}"#),
            ("fleet/agv-1/mission", r#"{"event_id":"e2","mission_id":"m-0001","status":"completed"}"#),
            ("fleet/agv-2/mission", r#"{"event_id":"e3","mission_id":"m-0001","status":"started"}"#),
            ("fleet/agv-2/mission", r#"{"mission_id":"m-0001","status":"completed"}"#),
        ];
        let keys: std::collections::HashSet<_> = sent
            .iter()
            .map(|(topic, payload)| match r.inbound(topic, payload.as_bytes(), false, 0, 0) {
                Inbound::Event(e) => e.dedupe_key,
                other => panic!("expected an event, got {other:?}"),
            })
            .collect();
        assert_eq!(keys.len(), 4, "four events, four keys: none is dropped as a duplicate");
    }

    #[test]
    fn non_matching_subscriptions_get_nothing_and_default_device_applies() {
        let Inbound::Event(e) = router().inbound("fleet/x/alert", br#"{"code":7}"#, false, 0, 0) else { panic!() };
        assert_eq!(e.device_id, "robot-0");
        assert_eq!(e.deliveries.iter().map(|d| d.subscription.as_str()).collect::<Vec<_>>(), ["all"]);
        assert!(!e.dedupe_check, "content hashes are only checked for DUP messages");
        assert!(matches!(router().inbound("other/topic", b"{}", false, 0, 0), Inbound::Nothing));
    }

    #[test]
    fn bad_payloads_are_quarantined_with_reasons() {
        let r = router();
        assert!(reason(r.inbound("fleet/a/alert", b"{nope", false, 0, 0)).contains("not JSON"));
        assert!(reason(r.inbound("fleet/a/alert", b"[1,2]", false, 0, 0)).contains("an array"));
        assert!(reason(r.inbound("fleet/a/alert", &[b'"'; 2000], false, 0, 0)).contains("max_payload"));
        assert!(reason(r.inbound("fleet/a/alert", &[0xff, 0xfe], false, 0, 0)).contains("UTF-8"));
        assert!(reason(r.inbound("fleet/a/mission", b"{}", false, 0, 0)).contains("/status"));
        assert!(reason(r.inbound("fleet/a/mission", br#"{"status":"a b"}"#, false, 0, 0)).contains("contains"));
    }
}

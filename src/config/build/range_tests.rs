//! Random values in every numeric key: `check` either refuses them, naming the key, or
//! the value it accepts is safe for the arithmetic that uses it (issue #14, item 5).

use proptest::prelude::*;

use super::*;

const BASE: &str = r#"
[storage]
path = "/tmp/x.db"
[[route]]
topic = "fleet/+/mission"
event = "mission.{/status}"
[[subscription]]
name = "ops"
url = "https://hooks.example.com/fleet"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

/// (section, key as written, key as `check` names it, whether the value is a string)
const KEYS: [(&str, &str, &str, bool); 14] = [
    ("heartbeat", "interval", "heartbeat.interval", true),
    ("delivery", "max_in_flight", "delivery.max_in_flight", false),
    ("delivery", "offline_probe_max", "delivery.offline_probe_max", true),
    ("delivery", "shutdown_grace", "delivery.shutdown_grace", true),
    ("storage", "max_bytes", "storage.max_bytes", true),
    ("storage", "write_behind", "storage.write_behind", true),
    ("mqtt", "keep_alive", "mqtt.keep_alive", true),
    ("mqtt", "max_payload", "mqtt.max_payload", true),
    ("mqtt", "broker_max_inflight", "mqtt.broker_max_inflight", false),
    ("route", "ttl", "route[0].ttl", true),
    ("subscription", "max_in_flight", "subscription[0].max_in_flight", false),
    ("subscription", "rate_limit", "subscription[0].rate_limit", true),
    ("subscription", "timeout", "subscription[0].timeout", true),
    ("subscription", "max_age", "subscription[0].max_age", true),
];

fn with_key(section: &str, key: &str, value: &str) -> String {
    match section {
        "route" => {
            BASE.replace("event = \"mission.{/status}\"", &format!("event = \"mission.{{/status}}\"\n{key} = {value}"))
        }
        "subscription" => format!("{BASE}{key} = {value}\n"),
        "storage" => BASE.replace("path = \"/tmp/x.db\"", &format!("path = \"/tmp/x.db\"\n{key} = {value}")),
        _ => format!("[{section}]\n{key} = {value}\n{BASE}"),
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![any::<u64>(), 0u64..10, Just(i64::MAX as u64), Just(u32::MAX as u64), Just((1u64 << 61) - 1),]
        .prop_map(|n| n.to_string())
}

fn amount() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("1e-300".to_string()),
        Just("1e300".to_string()),
        Just("NaN".to_string()),
        Just("-3".to_string()),
        Just("300000000".to_string()),
        Just("18446744073709551615".to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
    ]
}

fn text() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("ns"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("y"),
        Just("KiB"),
        Just("MiB"),
        Just("GiB"),
        Just("TiB"),
        Just("/s"),
        Just("/h"),
        Just(""),
        Just("junk")
    ];
    (amount(), unit).prop_map(|(n, u)| format!("\"{n}{u}\""))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn numeric_keys_are_refused_by_name_or_safe(which in 0..KEYS.len(), n in number(), t in text()) {
        let (section, key, named, is_text) = KEYS[which];
        let value = if is_text { t } else { n };
        let src = with_key(section, key, &value);
        match Config::parse(&src, Path::new("f.toml")) {
            Err(errors) => prop_assert!(
                errors.0.iter().any(|e| e.key == named),
                "{key} = {value}: refused without naming {named}: {:?}", errors.0
            ),
            Ok(c) => {
                let sub = &c.subscriptions[0];
                // A tokio semaphore takes at most usize::MAX >> 3 permits.
                prop_assert!(c.delivery.max_in_flight <= usize::MAX >> 3);
                prop_assert!(sub.max_in_flight >= 1 && sub.max_in_flight <= usize::MAX >> 3);
                // Probes of a dead endpoint never spin.
                prop_assert!(c.delivery.offline_probe_max >= Duration::from_millis(100));
                // Heartbeats off, or at most one a second.
                prop_assert!(c.heartbeat.interval.is_zero() || c.heartbeat.interval >= Duration::from_secs(1));
                // The token bucket's refill interval is a Duration.
                if let Some(rate) = sub.rate_limit {
                    prop_assert!(Duration::try_from_secs_f64(1.0 / rate.per_second).is_ok(), "{value}");
                }
                // Expiry times in ms do not wrap for a century.
                let century_ms = 100 * 365 * 86_400_000i64;
                for age in [Some(sub.max_age), c.routes[0].ttl].into_iter().flatten() {
                    prop_assert!(i64::try_from(age.as_millis()).ok().and_then(|a| a.checked_add(century_ms)).is_some());
                    prop_assert!(age >= Duration::from_secs(1), "an age under a second expires on ingest");
                }
                prop_assert!(c.mqtt.keep_alive.as_secs() <= u16::MAX as u64 && c.mqtt.keep_alive.as_secs() >= 5);
                prop_assert!(c.storage.max_bytes >= 64 << 10);
            }
        }
    }
}

//! What the ROS bridges really publish (issue #17): MessagePack (groove-x mqtt_bridge's
//! default), CBOR, plain primitives (ika mqtt_client), bytes, and a mix told apart by
//! content. The payloads come from encoders nobody here wrote: PyPI's `msgpack` and
//! `cbor2` (scripts/test.sh installs them); MQTT 5 properties come from mosquitto_pub.
//! Real mosquitto, the real binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

/// Encodes each `(format, python expression)` with the Python library, as bytes.
fn encoded(items: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let mut script = String::from("import sys, msgpack, cbor2\nout = []\n");
    for (format, expr) in items {
        let call = match *format {
            "msgpack" => format!("msgpack.packb({expr}, use_bin_type=True)"),
            "cbor" => format!("cbor2.dumps({expr})"),
            other => panic!("no encoder for {other}"),
        };
        script.push_str(&format!("out.append({call}.hex())\n"));
    }
    script.push_str("print('\\n'.join(out))\n");
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| hex::decode(l).unwrap()).collect()
}

fn routes() -> &'static str {
    r#"
[[route]]
topic = "bridge/+/anomaly"
event = "anomaly.{/kind}"
device_id = "{topic.1}"
dedupe = "/id"
payload = "msgpack"

[[route]]
topic = "cbor/+/mission"
event = "mission.{/status}"
device_id = "{topic.1}"
payload = "cbor"

[[route]]
topic = "ika/+/battery"
event = "robot.battery"
device_id = "{topic.1}"
payload = "text"

[[route]]
topic = "raw/+/blob"
event = "robot.blob"
payload = "binary"

[[route]]
topic = "any/+/state"
event = "robot.state"
payload = "auto"
"#
}

#[test]
fn bridges_payloads_become_events_and_bad_ones_are_quarantined_with_the_decoders_reason() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + routes() + &subscription("ops", &ep.url(), "events = [\"*\"]");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();

    let bytes = encoded(&[
        ("msgpack", r#"{"kind": "lidar", "id": "a-1", "level": 3, "raw": b"\x01\x02", 7: None}"#),
        ("msgpack", r#"{"kind": "lidar", "id": "a-1", "level": 3, "raw": b"\x01\x02", 7: None}"#),
        ("cbor", r#"{"status": "completed", "waypoints": [1, 2.5, -3], "ok": True}"#),
        ("msgpack", r#"{"state": "docking", "load": 0.25}"#),
        ("cbor", r#"["not", "a", "map"]"#),
    ]);
    let t = |topic: &str, payload: Vec<u8>| (topic.to_string(), payload);
    publish(
        broker.port,
        &[
            t("bridge/agv-1/anomaly", bytes[0].clone()),
            // The bridge publishes the same anomaly twice: its own id says so.
            t("bridge/agv-1/anomaly", bytes[1].clone()),
            t("cbor/agv-2/mission", bytes[2].clone()),
            t("ika/agv-3/battery", b"81.5".to_vec()),
            t("ika/agv-3/battery", b"charging".to_vec()),
            t("raw/agv-4/blob", vec![0xff, 0x00, 0x10]),
            t("any/agv-5/state", bytes[3].clone()),
            t("any/agv-5/state", bytes[4].clone()),
            t("any/agv-5/state", b"true".to_vec()),
            // Not MessagePack at all: a truncated map.
            t("bridge/agv-1/anomaly", vec![0x82, 0xa1, b'a']),
        ],
    );
    let got = ep.wait_for(8, LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ep.count(), 8, "the repeated anomaly is one event: {:?}", ep.requests().len());
    for r in &got {
        verify(r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    // A parallel subscription: the order of arrival is not asserted, what arrived is.
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(|d| d.to_string());
        v
    };
    let find = |ty: &str, device: &str| -> Vec<Value> {
        sorted(
            events.iter().filter(|e| e["type"] == ty && e["device_id"] == device).map(|e| e["data"].clone()).collect(),
        )
    };
    assert_eq!(
        find("anomaly.lidar", "agv-1"),
        vec![json!({"kind": "lidar", "id": "a-1", "level": 3, "raw": {"$base64": "AQI="}, "7": null})]
    );
    assert_eq!(
        find("mission.completed", "agv-2"),
        vec![json!({"status": "completed", "waypoints": [1, 2.5, -3], "ok": true})]
    );
    assert_eq!(find("robot.battery", "agv-3"), sorted(vec![json!({"value": 81.5}), json!({"value": "charging"})]));
    assert_eq!(
        find("robot.state", "test-robot"),
        sorted(vec![
            json!({"state": "docking", "load": 0.25}),
            json!({"value": ["not", "a", "map"]}),
            json!({"value": true})
        ])
    );
    assert_eq!(find("robot.blob", "test-robot"), vec![json!({"base64": "/wAQ", "size": 3})]);

    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1));
    let reason: String = agent.db().query_row("SELECT reason FROM quarantine", [], |r| r.get(0)).unwrap();
    assert!(reason.starts_with("payload is not MessagePack"), "{reason}");
}

/// A payload format `check` does not know is named with its line.
#[test]
fn an_unknown_payload_format_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(1883) + "\n[[route]]\ntopic = \"x/#\"\nevent = \"robot.x\"\npayload = \"protobuf\"\n";
    let path = dir.path().join("fleethook.toml");
    std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleethook")).arg("check").arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = config.lines().position(|l| l.starts_with("payload =")).unwrap() + 1;
    assert!(err.contains(&format!(":{line}: route[2].payload: `protobuf` is not json, msgpack")), "{err}");
}

/// One MQTT 5 message: topic, payload, content type, expiry in seconds, user properties.
type V5Message = (&'static str, Vec<u8>, Option<&'static str>, Option<u32>, Vec<(&'static str, &'static str)>);

/// Publishes QoS 1 MQTT 5 messages with properties through mosquitto_pub (libmosquitto's
/// MQTT 5 encoder, not the rumqttc the agent uses), each acked before it returns.
fn publish_v5(port: u16, messages: Vec<V5Message>) {
    let dir = tempfile::tempdir().unwrap();
    for (n, (topic, payload, content_type, expiry, user)) in messages.into_iter().enumerate() {
        let file = dir.path().join(format!("payload-{n}"));
        std::fs::write(&file, payload).unwrap();
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-V", "mqttv5", "-q", "1", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic]);
        cmd.arg("-f").arg(&file);
        if let Some(ct) = content_type {
            cmd.args(["-D", "publish", "content-type", ct]);
        }
        if let Some(s) = expiry {
            cmd.args(["-D", "publish", "message-expiry-interval", &s.to_string()]);
        }
        for (k, v) in user {
            cmd.args(["-D", "publish", "user-property", k, v]);
        }
        let out = cmd.output().expect("mosquitto_pub");
        assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// With `[mqtt] version = 5`: user properties fill templates, the content type decides
/// an `auto` route's format, and the message expiry caps the event's TTL.
#[test]
fn mqtt5_properties_name_events_pick_the_format_and_cap_the_ttl() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
[[route]]
topic = "v5/#"
event = "anomaly.{prop.kind}"
device_id = "{prop.robot}"
payload = "auto"
"#;
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let config = base_config(broker.port).replace("[mqtt]\n", "[mqtt]\nversion = 5\n")
        + routes
        + &subscription("ops", &ep.url(), "events = [\"anomaly.*\"]")
        + &subscription("later", &down, "events = [\"anomaly.*\"]");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let packed = encoded(&[("msgpack", r#"{"level": 3}"#)]).remove(0);
    publish_v5(
        broker.port,
        vec![
            ("v5/lidar", packed, Some("application/msgpack"), None, vec![("kind", "lidar"), ("robot", "agv-9")]),
            // Bytes by its content type, though they would pass for JSON's 42.
            (
                "v5/raw",
                b"42".to_vec(),
                Some("application/octet-stream"),
                Some(1),
                vec![("kind", "raw"), ("robot", "agv-9")],
            ),
            // No user properties: the template cannot render.
            ("v5/nameless", b"{}".to_vec(), None, None, vec![]),
        ],
    );
    let got = ep.wait_for(2, LONG);
    let mut seen: Vec<(String, String, Value)> = got
        .iter()
        .map(|r| {
            let e = r.json();
            (e["type"].as_str().unwrap().into(), e["device_id"].as_str().unwrap().into(), e["data"].clone())
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("anomaly.lidar".into(), "agv-9".into(), json!({"level": 3})),
            ("anomaly.raw".into(), "agv-9".into(), json!({"base64": "NDI=", "size": 2})),
        ]
    );
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1));
    let reason: String = agent.db().query_row("SELECT reason FROM quarantine", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("no user property `kind`"), "{reason}");
    // For the subscription that is down, the raw event's 1 s expiry ends it; the lidar
    // event, with none, waits.
    let state = |ty: &str| -> String {
        agent
            .db()
            .query_row(
                "SELECT d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.subscription = 'later' AND e.type = ?1",
                [ty],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert!(wait_until(LONG, || state("anomaly.raw") == "expired"), "{}", agent.log());
    assert_eq!(state("anomaly.lidar"), "pending");
}

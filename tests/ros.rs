//! `payload = "ros"` (issue #17): ika mqtt_client's serialized ROS 1 and ROS 2 messages,
//! decoded with the type the bridge announces on `mqtt_client/ros_msg_type/<topic>`.
//! The messages come from PyPI's rosbags (tests/ros_messages.py; scripts/test.sh installs
//! it), which serializes ROS 1 and CDR without ROS. Real mosquitto, the real binary.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

/// `(topic, payload)` in the order ika mqtt_client publishes them: each type
/// announcement, then its message. Writes the ROS 2 `.msg` files under `msg_dir`.
fn ros_messages(msg_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ros_messages.py");
    let out = Command::new("python3").arg(script).arg(msg_dir).output().expect("python3");
    assert!(out.status.success(), "rosbags: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (topic, hex) = l.split_once(' ').unwrap();
            (topic.to_string(), hex::decode(hex).unwrap())
        })
        .collect()
}

fn config(broker: u16, msg_dir: &Path, type_wait: &str, ep: &Endpoint) -> String {
    base_config(broker)
        + &format!(
            r#"
[ros]
msg_path = ["{}"]
type_wait = "{type_wait}"

[[route]]
topic = "ros/+/mission"
event = "mission.{{/status}}"
device_id = "{{topic.1}}"
dedupe = "/mission_id"
payload = "ros"

[[route]]
topic = "ros/+/+"
event = "robot.{{topic.2}}"
device_id = "{{topic.1}}"
payload = "ros"
"#,
            msg_dir.display()
        )
        + &subscription("ops", &ep.url(), "events = [\"*\"]\nordering = \"fifo\"")
}

fn battery(ros1: bool) -> Value {
    let mut header = json!({"stamp": {"sec": 1_700_000_000, "nanosec": 5}, "frame_id": "base"});
    if ros1 {
        header["seq"] = json!(4);
    }
    json!({
        "header": header, "voltage": 24.5, "temperature": null, "current": -1.5, "charge": 10.0,
        "capacity": 20.0, "design_capacity": 20.0, "percentage": 0.5, "power_supply_status": 2,
        "power_supply_health": 1, "power_supply_technology": 2, "present": true,
        "cell_voltage": [3.5, 3.75], "cell_temperature": [], "location": "slot-1", "serial_number": "B-42"
    })
}

fn pose(ros1: bool) -> Value {
    let mut header = json!({"stamp": {"sec": 1_700_000_001, "nanosec": 5}, "frame_id": "map"});
    if ros1 {
        header["seq"] = json!(4);
    }
    json!({"header": header, "pose": {"position": {"x": 1.5, "y": -2.0, "z": 0.0},
        "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}})
}

/// A broker, a receiver, the agent with the two `payload = "ros"` routes, and the
/// messages rosbags made (their ROS 2 `.msg` files under the agent's directory).
/// Bound in the tests as `_dir, broker, ep, messages, agent`, so the agent goes first and
/// its directory last.
struct Rig {
    agent: Agent,
    messages: Vec<(String, Vec<u8>)>,
    ep: Endpoint,
    broker: Mosquitto,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(type_wait: &str) -> Rig {
        let broker = Mosquitto::start();
        let ep = Endpoint::start(Reply::Status(200));
        let dir = tempfile::tempdir().unwrap();
        let msg_dir = dir.path().join("share");
        let messages = ros_messages(&msg_dir);
        let agent = Agent::start(dir.path(), &config(broker.port, &msg_dir, type_wait, &ep));
        agent.wait_subscribed();
        Rig { agent, messages, ep, broker, _dir: dir }
    }
}

#[test]
fn ika_mqtt_client_ros1_and_ros2_messages_become_events_with_their_fields() {
    let Rig { _dir, broker, ep, messages, agent } = Rig::start("10s");

    // The first message comes before its type: it waits, unacked, and everything after
    // it waits behind it; the announcements (retained, as the bridge sends them) free it.
    let (first_type, first) = (&messages[0], &messages[1]);
    assert_eq!(first.0, "ros/agv-1/say");
    publish(broker.port, std::slice::from_ref(first));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.count(), 0, "nothing is delivered before the type is known");
    assert!(agent.log().contains("came before its type"), "{}", agent.log());
    let (types, data): (Vec<_>, Vec<_>) =
        messages[2..].iter().cloned().partition(|(t, _)| t.starts_with("mqtt_client/"));
    publish(broker.port, &data);
    publish_retained(broker.port, std::slice::from_ref(first_type));
    publish_retained(broker.port, &types);

    let got = ep.wait_for(8, LONG);
    std::thread::sleep(Duration::from_millis(300));
    let quarantined = agent.texts("SELECT reason FROM quarantine");
    assert_eq!(quarantined, Vec::<String>::new());
    assert_eq!(ep.count(), 8);
    for r in &got {
        verify(r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
    let by: HashMap<(String, String), Value> = got
        .iter()
        .map(|r| r.json())
        .map(|e| ((e["device_id"].as_str().unwrap().into(), e["type"].as_str().unwrap().into()), e["data"].clone()))
        .collect();
    let data = |device: &str, ty: &str| by.get(&(device.to_string(), ty.to_string())).cloned().unwrap_or_default();
    for (device, ros1) in [("agv-1", true), ("agv-2", false)] {
        assert_eq!(data(device, "robot.say"), json!({"data": "docking"}), "{device}");
        assert_eq!(data(device, "robot.battery"), battery(ros1), "{device}: stamped, NaN as null");
        assert_eq!(data(device, "robot.pose"), pose(ros1), "{device}");
        assert_eq!(
            data(device, "mission.completed"),
            json!({"mission_id": format!("{device}-m7"), "status": "completed", "step": 3,
                "waypoints": [{"x": 1.0, "y": 2.0, "z": 0.0}, {"x": 3.0, "y": 4.0, "z": 0.0}],
                "started": {"sec": 1_700_000_002, "nanosec": 0}}),
            "{device}: a custom message, the route's pointers read its fields"
        );
    }
    // Receive order: the held message first, then what came after it, in order.
    let order: Vec<String> = got
        .iter()
        .filter(|r| r.json()["device_id"] == "agv-1")
        .map(|r| r.json()["type"].as_str().unwrap().into())
        .collect();
    assert_eq!(order, ["robot.say", "robot.battery", "robot.pose", "mission.completed"]);
    assert_eq!(agent.count("SELECT COUNT(*) FROM quarantine"), 0);
}

/// A message waiting for its type holds back only its own topic: missions on another
/// route go out meanwhile, their acks queued in order behind its.
#[test]
fn messages_waiting_for_a_type_do_not_hold_back_other_routes() {
    let Rig { _dir, broker, ep, messages, agent } = Rig::start("60s");
    let find = |topic: &str| messages.iter().find(|(t, _)| t == topic).cloned().unwrap();
    publish(broker.port, &[find("ros/agv-2/pose")]);
    // Within mosquitto's window of 20 unacked: the pose's ack holds the ones behind it.
    let missions: Vec<_> = (0..15).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &missions);
    let got = ep.wait_for(15, LONG);
    assert_eq!(got.len(), 15, "the missions went while the pose waited for its type");
    assert!(got.iter().all(|r| r.json()["type"] == "mission.completed"));
    assert_eq!(agent.count("SELECT COUNT(*) FROM quarantine"), 0, "the pose still waits");
    publish_retained(broker.port, &[find("mqtt_client/ros_msg_type/ros/agv-2/pose")]);
    let got = ep.wait_for(16, LONG);
    assert_eq!(got[15].json()["type"], "robot.pose");
    assert_eq!(got[15].json()["data"], pose(false));
    // The pose's ack let the ones queued behind it go: the broker's window is free again.
    let more: Vec<_> = (15..40).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &more);
    assert_eq!(ep.wait_for(41, LONG).len(), 41, "acks flow again after the pose");
}

#[test]
fn a_ros_message_without_a_type_or_that_does_not_fit_it_is_quarantined_and_released_once_known() {
    let Rig { _dir, broker, ep, messages, agent } = Rig::start("1s");
    let find = |topic: &str| messages.iter().find(|(t, _)| t == topic).cloned().unwrap();

    // No announcement within ros.type_wait.
    publish(broker.port, &[find("ros/agv-2/pose")]);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1));
    let reason: String = agent.db().query_row("SELECT reason FROM quarantine", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("mqtt_client/ros_msg_type/ros/agv-2/pose"), "{reason}");

    // Announced, but the message is cut short.
    let (say_type, mut say) = (find("mqtt_client/ros_msg_type/ros/agv-1/say"), find("ros/agv-1/say"));
    publish_retained(broker.port, &[say_type]);
    say.1.truncate(say.1.len() - 2);
    publish(broker.port, &[say]);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 2));
    let reason: String =
        agent.db().query_row("SELECT reason FROM quarantine ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("not a std_msgs/String message") && reason.contains("ends early"), "{reason}");

    // Once the pose's type is announced, the quarantined pose can be released.
    publish_retained(broker.port, &[find("mqtt_client/ros_msg_type/ros/agv-2/pose")]);
    assert!(wait_until(LONG, || agent.log().contains("ros_type=geometry_msgs/msg/PoseStamped")), "{}", agent.log());
    let released = agent.cli_json(&["quarantine", "release", "--all"]);
    assert_eq!(released["released"], 1, "{released}");
    let got = ep.wait_for(1, LONG);
    assert_eq!(got[0].json()["data"], pose(false));
    assert_eq!(got[0].json()["type"], "robot.pose");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ep.count(), 1, "the cut-short message stays quarantined");
}

/// A ROS 2 type announced whose `.msg` file is missing: its messages are quarantined at
/// once with that reason (naming the file), not held for `ros.type_wait` and not blamed
/// on an announcement that never came.
#[test]
fn a_type_announced_without_its_msg_file_quarantines_its_messages_at_once_saying_so() {
    let Rig { _dir, broker, ep, messages, agent } = Rig::start("60s");
    let find = |topic: &str| messages.iter().find(|(t, _)| t == topic).cloned().unwrap();
    let pose_msg = _dir.path().join("share/geometry_msgs/msg/PoseStamped.msg");
    std::fs::remove_file(&pose_msg).unwrap();
    publish_retained(broker.port, &[find("mqtt_client/ros_msg_type/ros/agv-2/pose")]);
    assert!(wait_until(LONG, || agent.log().contains("Cannot use a ROS type announcement")), "{}", agent.log());
    publish(broker.port, &[find("ros/agv-2/pose"), find("mqtt_client/ros_msg_type/ros/agv-1/say")]);
    publish(broker.port, &[find("ros/agv-1/say")]);
    // Well within the 60 s type_wait: nothing waits for a type that has come.
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1));
    let reason: String = agent.db().query_row("SELECT reason FROM quarantine", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("PoseStamped.msg under ros.msg_path"), "{reason}");
    assert!(!reason.contains("nothing came"), "{reason}");
    assert!(!agent.log().contains("came before its type"), "{}", agent.log());
    // The message behind it is not held up.
    assert_eq!(ep.wait_for(1, LONG)[0].json()["type"], "robot.say");
}

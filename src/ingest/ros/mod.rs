//! `payload = "ros"`: ika mqtt_client's serialized ROS messages.
//!
//! The bridge publishes each ROS message as its serialized bytes, optionally behind a
//! serialized timestamp, and publishes what type it is, retained, on
//! `mqtt_client/ros_msg_type/<topic>`: an `mqtt_client/RosMsgType` message (`md5`,
//! `name`, `definition`, `stamped`). ROS 1 bridges fill in the full definition; ROS 2
//! bridges send the name only, so the agent reads `<dir>/<pkg>/msg/<Type>.msg` from
//! `ros.msg_path` (by default the share directories under `/opt/ros`).
//!
//! [`RosTypes`] is what ingest has learnt: per data topic, the type and its resolved
//! definitions, shared by the MQTT loop (which learns) and `quarantine release`.

pub mod msgdef;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use msgdef::{Definitions, Dialect, Elem};
use serde_json::Value;

/// Where ika mqtt_client publishes each topic's type.
pub const TYPE_TOPIC_PREFIX: &str = "mqtt_client/ros_msg_type/";

/// One topic's type, as its bridge announced it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicType {
    /// As announced: `std_msgs/String` (ROS 1) or `std_msgs/msg/String` (ROS 2).
    pub name: String,
    /// A timestamp precedes each message.
    pub stamped: bool,
    pub defs: Definitions,
    /// What it holds in memory, about (see [`weight`]).
    pub bytes: usize,
}

/// What a parsed type holds in memory, about: its names and one field record each.
pub fn weight(defs: &Definitions) -> usize {
    const PER_ENTRY: usize = 64;
    let field = std::mem::size_of::<msgdef::Field>() + PER_ENTRY;
    defs.msgs
        .iter()
        .map(|(name, fields)| {
            let named: usize = fields
                .iter()
                .map(|f| {
                    f.name.len()
                        + match &f.elem {
                            Elem::Msg(ty) => ty.len(),
                            Elem::Prim(_) => 0,
                        }
                })
                .sum();
            PER_ENTRY + name.len() + fields.len() * field + named
        })
        .sum()
}

/// The most refused announcements remembered (their topics come off the wire).
const REFUSED_MAX: usize = 1024;
/// The most type topics whose types are kept. Retained announcements come back at every
/// start, so what they may hold must be bounded in all, not only per type.
pub const TOPICS_MAX: usize = 1024;
/// What all kept types may hold, as [`weight`] counts it: a robot's few hundred topics of
/// ordinary types take well under 1 MiB; 300 announcements of 20 000 fields each once
/// took the agent to 570 MiB, over the unit's `MemoryMax`, at every start.
pub const TYPES_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The types learnt so far, by data topic, and the announcements that could not be used.
#[derive(Clone, Debug, Default)]
pub struct RosTypes {
    known: Arc<RwLock<HashMap<String, Arc<TopicType>>>>,
    /// Why a topic's announcement could not be used: its messages are quarantined with
    /// that reason at once, instead of waiting for a type that has already come.
    refused: Arc<RwLock<HashMap<String, String>>>,
    msg_path: Arc<Vec<PathBuf>>,
}

impl RosTypes {
    pub fn new(msg_path: Vec<PathBuf>) -> Self {
        RosTypes { known: Arc::default(), refused: Arc::default(), msg_path: Arc::new(msg_path) }
    }

    pub fn knows(&self, topic: &str) -> bool {
        self.known.read().map(|k| k.contains_key(topic)).unwrap_or(false)
    }

    /// Whether the topic's type was announced, usable or not: nothing more to wait for.
    pub fn announced(&self, topic: &str) -> bool {
        self.knows(topic) || self.refused.read().map(|r| r.contains_key(topic)).unwrap_or(false)
    }

    /// Reads a message from `mqtt_client/ros_msg_type/<topic>`. Returns the data topic
    /// and its type name when the type is new or changed, nothing when it is the one
    /// already known, or why it cannot be used.
    pub fn learn(&self, type_topic: &str, payload: &[u8]) -> Result<Option<(String, String)>, String> {
        let topic = type_topic.strip_prefix(TYPE_TOPIC_PREFIX).ok_or("not a type topic")?.to_string();
        let learnt = self.read_announcement(&topic, payload);
        if let Ok(mut refused) = self.refused.write() {
            match &learnt {
                Ok(_) => {
                    refused.remove(&topic);
                }
                Err(reason) => {
                    if refused.len() >= REFUSED_MAX {
                        refused.clear();
                    }
                    refused.insert(topic, reason.clone());
                }
            }
        }
        learnt
    }

    fn read_announcement(&self, topic: &str, payload: &[u8]) -> Result<Option<(String, String)>, String> {
        let topic = topic.to_string();
        let announced = announcement(payload)?;
        msgdef::check_type_name(&msgdef::short_name(&announced.name))?;
        if let Some(known) = self.known.read().ok().and_then(|k| k.get(&topic).cloned())
            && known.name == announced.name
            && known.stamped == announced.stamped
            && known.defs.dialect == announced.dialect
        {
            return Ok(None);
        }
        let defs = match announced.dialect {
            Dialect::Ros1 => msgdef::parse_full(&announced.name, &announced.definition, Dialect::Ros1),
            Dialect::Ros2 => self.load_ros2(&announced.name),
        }
        .map_err(|e| format!("{} cannot be used: {e}", printable_name(&announced.name)))?;
        let name = announced.name.clone();
        let bytes = weight(&defs);
        let ty = TopicType { name: announced.name, stamped: announced.stamped, defs, bytes };
        let mut known = self.known.write().map_err(|_| "the type table is unusable".to_string())?;
        let others = known.iter().filter(|(t, _)| **t != topic);
        let (count, held) = others.fold((0, 0), |(n, b), (_, t)| (n + 1, b + t.bytes));
        if count >= TOPICS_MAX {
            known.remove(&topic);
            return Err(format!("the types of {TOPICS_MAX} other topics are kept, the most the agent keeps"));
        }
        if held + bytes > TYPES_BYTES_MAX {
            known.remove(&topic);
            return Err(format!(
                "{} would take the ROS types kept to {} KiB, over their {} KiB",
                printable_name(&name),
                (held + bytes) / 1024,
                TYPES_BYTES_MAX / 1024
            ));
        }
        known.insert(topic.clone(), Arc::new(ty));
        Ok(Some((topic, name)))
    }

    /// Decodes a message published on `topic` with the type learnt for it.
    pub fn decode(&self, topic: &str, payload: &[u8]) -> Result<Value, String> {
        let ty = self.known.read().ok().and_then(|k| k.get(topic).cloned()).ok_or_else(|| {
            match self.refused.read().ok().and_then(|r| r.get(topic).cloned()) {
                Some(reason) => format!("the type announced on {TYPE_TOPIC_PREFIX}{topic} is refused: {reason}"),
                None => format!("no ROS type is known for this topic: nothing came on {TYPE_TOPIC_PREFIX}{topic}"),
            }
        })?;
        let body = if ty.stamped {
            let skip = wire::stamp_len(ty.defs.dialect);
            payload.get(skip..).ok_or("the payload is shorter than its timestamp")?
        } else {
            payload
        };
        wire::decode(&ty.defs, body).map_err(|e| format!("not a {} message: {e}", ty.name))
    }

    /// A ROS 2 type and every type it uses, from `.msg` files under `msg_path`.
    fn load_ros2(&self, root: &str) -> Result<Definitions, String> {
        let root = msgdef::short_name(root);
        let mut msgs = HashMap::new();
        let mut todo = vec![root.clone()];
        while let Some(name) = todo.pop() {
            if msgs.contains_key(&name) {
                continue;
            }
            if msgs.len() >= msgdef::MAX_TYPES {
                return Err(format!("{root} uses more than {} types", msgdef::MAX_TYPES));
            }
            let fields =
                msgdef::parse_fields(&self.msg_text(&name)?, Dialect::Ros2).map_err(|e| format!("{name}: {e}"))?;
            for f in &fields {
                if let Elem::Msg(ty) = &f.elem {
                    todo.push(msgdef::referenced(ty, &name, Dialect::Ros2));
                }
            }
            msgs.insert(name, fields);
        }
        msgdef::resolve(root, Dialect::Ros2, msgs)
    }

    /// The text of `<dir>/<pkg>/msg/<Type>.msg` for the first `ros.msg_path` entry that
    /// has it. `name` is checked to be `package/Type` first: it comes off the wire, and
    /// must not name a file anywhere else.
    fn msg_text(&self, name: &str) -> Result<String, String> {
        msgdef::check_type_name(name)?;
        let (pkg, ty) = name.split_once('/').ok_or_else(|| format!("`{name}` is not a `package/Type` name"))?;
        for dir in self.msg_path.iter() {
            let path = dir.join(pkg).join("msg").join(format!("{ty}.msg"));
            if let Ok(text) = read_msg_file(&path) {
                return Ok(text);
            }
        }
        // The two types every ROS 2 install has, for an agent whose robot keeps its
        // `.msg` files elsewhere.
        match name {
            "builtin_interfaces/Time" => Ok("int32 sec\nuint32 nanosec\n".into()),
            "builtin_interfaces/Duration" => Ok("int32 sec\nuint32 nanosec\n".into()),
            _ => Err(format!(
                "no {pkg}/msg/{ty}.msg under ros.msg_path ({}); ROS 2 bridges do not send definitions",
                self.msg_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// A type name off the wire, as it may be shown (it was not checked yet when refused).
fn printable_name(name: &str) -> String {
    crate::text::printable(&name.chars().take(200).collect::<String>()).into_owned()
}

/// Largest `.msg` file read (the largest in a ROS 2 install is a few KiB).
const MSG_FILE_MAX: u64 = 256 * 1024;

fn read_msg_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MSG_FILE_MAX).read_to_string(&mut text)?;
    Ok(text)
}

/// A decoded `mqtt_client/RosMsgType`.
struct Announcement {
    name: String,
    definition: String,
    stamped: bool,
    dialect: Dialect,
}

/// A ROS 1 `RosMsgType` starts with its md5's length (32); a ROS 2 one with a CDR
/// encapsulation header.
fn announcement(payload: &[u8]) -> Result<Announcement, String> {
    let dialect = match payload.get(..2) {
        Some([0, 0 | 1]) => Dialect::Ros2,
        _ => Dialect::Ros1,
    };
    let defs = msgdef::parse_full(
        "mqtt_client/RosMsgType",
        "string md5\nstring name\nstring definition\nbool stamped\n",
        dialect,
    )?;
    let v = wire::decode(&defs, payload).map_err(|e| format!("not an mqtt_client/RosMsgType: {e}"))?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let name = text("name");
    if name.is_empty() {
        return Err("the type announcement names no type".into());
    }
    Ok(Announcement { name, definition: text("definition"), stamped: v["stamped"] == true, dialect })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ros1_string(s: &str) -> Vec<u8> {
        [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat()
    }

    fn ros1_announcement(name: &str, definition: &str, stamped: bool) -> Vec<u8> {
        [
            ros1_string("992ce8a1687cec8c8bd883ec73ca41d1"),
            ros1_string(name),
            ros1_string(definition),
            vec![stamped as u8],
        ]
        .concat()
    }

    #[test]
    fn a_ros1_type_is_learnt_once_and_decodes_stamped_messages() {
        let types = RosTypes::default();
        let ann = ros1_announcement("std_msgs/String", "string data\n", true);
        let learnt = types.learn("mqtt_client/ros_msg_type/robot/say", &ann).unwrap();
        assert_eq!(learnt, Some(("robot/say".into(), "std_msgs/String".into())));
        assert_eq!(types.learn("mqtt_client/ros_msg_type/robot/say", &ann).unwrap(), None);
        let msg = [&[1, 0, 0, 0, 2, 0, 0, 0][..], &ros1_string("docking")].concat();
        assert_eq!(types.decode("robot/say", &msg).unwrap(), serde_json::json!({"data": "docking"}));
        assert!(types.decode("robot/other", &msg).unwrap_err().contains("mqtt_client/ros_msg_type/robot/other"));
    }

    /// Retained announcements come back at every start: what they hold is bounded in all,
    /// and a topic past the bound has its messages quarantined with the reason.
    #[test]
    fn announcements_past_the_types_budget_are_refused() {
        let types = RosTypes::default();
        let fields: String = (0..20_000).map(|i| format!("int32 field_number_{i}\n")).collect();
        let mut refused = 0;
        for n in 0..40 {
            let ann = ros1_announcement(&format!("big_msgs/Big{n}"), &fields, false);
            match types.learn(&format!("mqtt_client/ros_msg_type/robot/big{n}"), &ann) {
                Ok(_) => assert_eq!(refused, 0, "once over the budget, every bigger one is refused"),
                Err(e) => {
                    assert!(e.contains("over their 16384 KiB"), "{e}");
                    refused += 1;
                }
            }
        }
        let held: usize = types.known.read().unwrap().values().map(|t| t.bytes).sum();
        assert!(refused > 0 && held <= TYPES_BYTES_MAX, "refused {refused}, held {held}");
        let err = types.decode("robot/big39", &[0; 4]).unwrap_err();
        assert!(err.contains("is refused") && err.contains("over their"), "{err}");
        // An ordinary type still fits, and an announcement again for a kept topic replaces
        // its own weight instead of adding to it.
        let small = ros1_announcement("std_msgs/String", "string data\n", false);
        assert!(types.learn("mqtt_client/ros_msg_type/robot/say", &small).unwrap().is_some());
        let again = ros1_announcement("big_msgs/Big0b", &fields, false);
        assert!(types.learn("mqtt_client/ros_msg_type/robot/big0", &again).unwrap().is_some());
    }

    fn ros2_announcement(name: &str) -> Vec<u8> {
        let name = [name.as_bytes(), b"\0"].concat();
        let pad = (4 - name.len() % 4) % 4;
        [
            &[0, 1, 0, 0][..],
            &1u32.to_le_bytes(),
            &[0, 0, 0, 0],
            &(name.len() as u32).to_le_bytes(),
            &name,
            &vec![0; pad],
            &1u32.to_le_bytes(),
            &[0, 0, 0, 0],
        ]
        .concat()
    }

    /// The red team's name: `pkg//tmp/x/outside` read `/tmp/x/outside.msg`.
    #[test]
    fn a_ros2_type_name_cannot_leave_msg_path() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("outside.msg"), "int8 a\nSECRET LINE\n").unwrap();
        let msg_path = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(msg_path.path().join("pkg/msg")).unwrap();
        let types = RosTypes::new(vec![msg_path.path().to_path_buf()]);
        let name = format!("pkg/{}/outside", outside.path().display());
        let e = types.learn("mqtt_client/ros_msg_type/t", &ros2_announcement(&name)).unwrap_err();
        assert!(e.contains("not a ROS type name") && !e.contains("SECRET"), "{e}");
        let e = types.learn("mqtt_client/ros_msg_type/t", &ros2_announcement("pkg/msg/../../x")).unwrap_err();
        assert!(e.contains("not a ROS type name"), "{e}");
        assert!(!types.knows("t"));
    }

    #[test]
    fn a_ros2_type_comes_from_msg_files() {
        let dir = tempfile::tempdir().unwrap();
        let msg = dir.path().join("demo/msg");
        std::fs::create_dir_all(&msg).unwrap();
        std::fs::write(msg.join("Mission.msg"), "builtin_interfaces/Time stamp\nStep[] steps\n").unwrap();
        std::fs::write(msg.join("Step.msg"), "string name\n").unwrap();
        let types = RosTypes::new(vec![dir.path().to_path_buf()]);
        // CDR: header, then md5 "", name, definition "", stamped false.
        let name = b"demo/msg/Mission\0";
        let ann = [
            &[0, 1, 0, 0][..],
            &1u32.to_le_bytes(),
            &[0, 0, 0, 0],
            &(name.len() as u32).to_le_bytes(),
            name,
            &[0, 0, 0],
            &1u32.to_le_bytes(),
            &[0, 0],
        ]
        .concat();
        types.learn("mqtt_client/ros_msg_type/m", &ann).unwrap();
        let data = [
            &[0, 1, 0, 0][..],
            &5i32.to_le_bytes(),
            &6u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"go\0",
        ]
        .concat();
        assert_eq!(
            types.decode("m", &data).unwrap(),
            serde_json::json!({"stamp": {"sec": 5, "nanosec": 6}, "steps": [{"name": "go"}]})
        );
        let missing = RosTypes::new(vec![]).learn("mqtt_client/ros_msg_type/m", &ann).unwrap_err();
        assert!(missing.contains("demo/msg/Mission.msg"), "{missing}");
    }
}

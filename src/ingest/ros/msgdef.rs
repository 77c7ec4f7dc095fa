//! ROS message definitions (`.msg` text) parsed into the field lists the decoder walks.
//!
//! One parser reads both sources the agent meets:
//! - a ROS 1 *full* definition, as ika mqtt_client sends it on its type topic: the
//!   message's own text, then each type it uses after a line of `=` and `MSG: pkg/Type`;
//! - a ROS 2 `.msg` file, one type per file, found under `ros.msg_path`.
//!
//! Constants (`int32 X=1`) carry no bytes and are skipped; ROS 2 default values are
//! ignored. Type names are kept as `pkg/Type` (`pkg/msg/Type` is shortened), and a name
//! without a package means the package of the message that uses it (`Header` means
//! `std_msgs/Header` in ROS 1).

use std::collections::HashMap;

/// The two encodings of ika mqtt_client's serialized messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// ROS 1 serialization: little-endian, packed, `time`/`duration` primitives.
    Ros1,
    /// ROS 2: CDR (XCDR1) with its 4-byte encapsulation header, aligned.
    Ros2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prim {
    Bool,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    String,
    WString,
    /// ROS 1 `time`: `uint32 secs, uint32 nsecs`.
    Time,
    /// ROS 1 `duration`: `int32 secs, int32 nsecs`.
    Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Elem {
    Prim(Prim),
    /// A nested message, by its `pkg/Type`.
    Msg(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    One,
    Fixed(usize),
    /// A sequence (`T[]` or bounded `T[<=N]`): a length on the wire, then the items.
    Seq,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub elem: Elem,
    pub count: Count,
}

/// A message type and every type it uses, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Definitions {
    pub root: String,
    pub dialect: Dialect,
    pub msgs: HashMap<String, Vec<Field>>,
}

/// `pkg/msg/Type` → `pkg/Type`.
pub fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.trim().split('/').collect();
    match parts.as_slice() {
        [pkg, "msg", ty] => format!("{pkg}/{ty}"),
        _ => name.trim().to_string(),
    }
}

fn package(name: &str) -> &str {
    name.split('/').next().unwrap_or("")
}

/// Parses one type's text; nested types are left as written (resolved by [`resolve`]).
pub fn parse_fields(text: &str, dialect: Dialect) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(ty), Some(name)) = (words.next(), words.next()) else {
            return Err(format!("line {}: `{line}` is not `type name`", n + 1));
        };
        // A constant: `TYPE NAME=VALUE` or `TYPE NAME = VALUE`.
        if name.contains('=') || words.next().is_some_and(|w| w.starts_with('=')) {
            continue;
        }
        let (elem, count) = parse_type(ty, dialect).map_err(|e| format!("line {}: {e}", n + 1))?;
        fields.push(Field { name: name.to_string(), elem, count });
    }
    Ok(fields)
}

fn parse_type(ty: &str, dialect: Dialect) -> Result<(Elem, Count), String> {
    let (base, count) = match ty.find('[') {
        Some(i) => {
            let inner = ty[i + 1..].strip_suffix(']').ok_or_else(|| format!("`{ty}` has no closing `]`"))?;
            let count = if inner.is_empty() || inner.starts_with("<=") {
                Count::Seq
            } else {
                Count::Fixed(inner.parse().map_err(|_| format!("`{ty}` has an array size that is not a number"))?)
            };
            (&ty[..i], count)
        }
        None => (ty, Count::One),
    };
    // Bounded strings: `string<=10`.
    let base = base.split("<=").next().unwrap_or(base);
    let prim = match base {
        "bool" => Prim::Bool,
        "int8" => Prim::I8,
        "byte" if dialect == Dialect::Ros1 => Prim::I8,
        "uint8" | "byte" | "char" => Prim::U8,
        "int16" => Prim::I16,
        "uint16" => Prim::U16,
        "int32" => Prim::I32,
        "uint32" => Prim::U32,
        "int64" => Prim::I64,
        "uint64" => Prim::U64,
        "float32" => Prim::F32,
        "float64" => Prim::F64,
        "string" => Prim::String,
        "wstring" => Prim::WString,
        "time" if dialect == Dialect::Ros1 => Prim::Time,
        "duration" if dialect == Dialect::Ros1 => Prim::Duration,
        "" => return Err(format!("`{ty}` names no type")),
        other => return Ok((Elem::Msg(other.to_string()), count)),
    };
    Ok((Elem::Prim(prim), count))
}

/// Parses a ROS 1 full definition of `root` (its text, then `MSG:` sections).
pub fn parse_full(root: &str, text: &str, dialect: Dialect) -> Result<Definitions, String> {
    let root = short_name(root);
    let mut sections: Vec<(String, String)> = vec![(root.clone(), String::new())];
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.len() >= 3 && trimmed.chars().all(|c| c == '=') {
            sections.push((String::new(), String::new()));
            continue;
        }
        let last = sections.last_mut().expect("sections starts with one");
        if last.0.is_empty() {
            if let Some(name) = trimmed.strip_prefix("MSG:") {
                last.0 = short_name(name);
            }
            // Anything before `MSG:` in a section is blank or a comment.
            continue;
        }
        last.1.push_str(line);
        last.1.push('\n');
    }
    let mut msgs = HashMap::new();
    for (name, body) in sections.into_iter().filter(|(n, _)| !n.is_empty()) {
        let fields = parse_fields(&body, dialect).map_err(|e| format!("{name}: {e}"))?;
        msgs.entry(name).or_insert(fields);
    }
    resolve(root, dialect, msgs)
}

/// Qualifies every nested type name and checks each is defined.
pub fn resolve(root: String, dialect: Dialect, mut msgs: HashMap<String, Vec<Field>>) -> Result<Definitions, String> {
    let names: Vec<String> = msgs.keys().cloned().collect();
    for (owner, fields) in msgs.iter_mut() {
        for f in fields.iter_mut() {
            if let Elem::Msg(ty) = &f.elem {
                let full = qualify(ty, owner, dialect, &names)
                    .ok_or_else(|| format!("{owner}: the type `{ty}` of field `{}` is not defined", f.name))?;
                f.elem = Elem::Msg(full);
            }
        }
    }
    if !msgs.contains_key(&root) {
        return Err(format!("the definition of {root} is missing"));
    }
    Ok(Definitions { root, dialect, msgs })
}

/// The `pkg/Type` a field's type names, if it is among `names`.
pub fn qualify(ty: &str, owner: &str, dialect: Dialect, names: &[String]) -> Option<String> {
    let ty = short_name(ty);
    let candidates = if ty.contains('/') {
        vec![ty.clone()]
    } else if ty == "Header" && dialect == Dialect::Ros1 {
        vec!["std_msgs/Header".to_string()]
    } else {
        vec![format!("{}/{ty}", package(owner))]
    };
    if let Some(found) = candidates.into_iter().find(|c| names.contains(c)) {
        return Some(found);
    }
    // A bare name defined once under any package (older definitions leave some bare).
    let suffix = format!("/{ty}");
    let mut matching = names.iter().filter(|n| n.ends_with(&suffix));
    match (matching.next(), matching.next()) {
        (Some(one), None) => Some(one.clone()),
        _ => None,
    }
}

/// The `pkg/Type` a nested type refers to before every definition is known (for loading
/// `.msg` files one by one).
pub fn referenced(ty: &str, owner: &str, dialect: Dialect) -> String {
    let ty = short_name(ty);
    if ty.contains('/') {
        ty
    } else if ty == "Header" && dialect == Dialect::Ros1 {
        "std_msgs/Header".into()
    } else {
        format!("{}/{ty}", package(owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSE_STAMPED: &str = "# A Pose with reference coordinate frame and timestamp
Header header
Pose pose

================================================================================
MSG: std_msgs/Header
# sequence ID
uint32 seq
time stamp
string frame_id

================================================================================
MSG: geometry_msgs/Pose
Point position
Quaternion orientation

================================================================================
MSG: geometry_msgs/Point
float64 x
float64 y
float64 z

================================================================================
MSG: geometry_msgs/Quaternion
float64 x
float64 y
float64 z
float64 w
";

    #[test]
    fn a_ros1_full_definition_resolves_bare_names() {
        let d = parse_full("geometry_msgs/PoseStamped", POSE_STAMPED, Dialect::Ros1).unwrap();
        assert_eq!(d.root, "geometry_msgs/PoseStamped");
        let root = &d.msgs["geometry_msgs/PoseStamped"];
        assert_eq!(root[0].elem, Elem::Msg("std_msgs/Header".into()));
        assert_eq!(root[1].elem, Elem::Msg("geometry_msgs/Pose".into()));
        assert_eq!(d.msgs["geometry_msgs/Pose"][1].elem, Elem::Msg("geometry_msgs/Quaternion".into()));
        assert_eq!(d.msgs["std_msgs/Header"][1].elem, Elem::Prim(Prim::Time));
    }

    #[test]
    fn constants_arrays_bounds_and_defaults() {
        let f = parse_fields(
            "uint8 POWER_SUPPLY_STATUS_CHARGING=1\nstring NAME = \"a # b\"\nfloat32[] cells\nint16[3] xyz\nstring<=8[<=4] tags\nint32 speed 5 # default\n",
            Dialect::Ros2,
        )
        .unwrap();
        let shape: Vec<_> = f.iter().map(|f| (f.name.as_str(), f.count)).collect();
        assert_eq!(
            shape,
            [("cells", Count::Seq), ("xyz", Count::Fixed(3)), ("tags", Count::Seq), ("speed", Count::One)]
        );
        assert_eq!(f[2].elem, Elem::Prim(Prim::String));
    }

    #[test]
    fn what_is_not_defined_is_named() {
        let e = parse_full("a/B", "Missing m\n", Dialect::Ros1).unwrap_err();
        assert!(e.contains("`Missing`"), "{e}");
        assert!(parse_fields("int32[x] a", Dialect::Ros1).unwrap_err().contains("not a number"));
        assert!(parse_fields("lonely", Dialect::Ros1).unwrap_err().contains("line 1"));
    }
}

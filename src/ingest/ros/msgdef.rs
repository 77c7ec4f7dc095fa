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
//!
//! Definitions come off the wire, so they are bounded like any input: a type name is
//! `package/Type` (letters, digits and `_`), never a path; a fixed array holds at most
//! [`MAX_FIXED`] items; a definition names at most [`MAX_TYPES`] types, none contains
//! itself, and one message expands to at most [`MAX_VALUES`] values before its
//! sequences (a tree of empty messages 20 levels deep is refused here, not decoded).

use std::collections::HashMap;

/// Most items in a fixed-size array (`float64[36] covariance` is a large one in practice).
pub const MAX_FIXED: usize = 1 << 16;
/// Most types one definition may name.
pub const MAX_TYPES: usize = 256;
/// Most values one message may expand to, counting fixed arrays item by item and each
/// sequence as one (what a sequence holds is paid for by the bytes it reads).
pub const MAX_VALUES: usize = 1 << 16;

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

/// True for `package/Type` (ROS names: a letter, then letters, digits and `_`), the
/// only names the agent looks up, so that none can climb out of `ros.msg_path`.
pub fn is_type_name(name: &str) -> bool {
    let word = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_alphabetic()) && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('/') {
        Some((pkg, ty)) => word(pkg) && word(ty) && name.len() <= 256,
        None => false,
    }
}

/// Checks an announced or referenced name, for an error that shows it safely.
pub fn check_type_name(name: &str) -> Result<(), String> {
    if is_type_name(name) {
        return Ok(());
    }
    let shown: String = crate::text::printable(name).chars().take(80).collect();
    Err(format!("`{shown}` is not a ROS type name (package/Type)"))
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
            let shown: String = line.chars().take(60).collect();
            return Err(format!("line {}: `{shown}` is not `type name`", n + 1));
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
                let n: usize = inner.parse().map_err(|_| format!("`{ty}` has an array size that is not a number"))?;
                if n > MAX_FIXED {
                    return Err(format!("`{ty}` is a fixed array of more than {MAX_FIXED} items"));
                }
                Count::Fixed(n)
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
        other => {
            // `Type`, `pkg/Type` or `pkg/msg/Type`, nothing else.
            let short = short_name(other);
            let bare_ok = !short.contains('/') && is_type_name(&format!("x/{short}"));
            if !bare_ok && !is_type_name(&short) {
                return Err(check_type_name(other).unwrap_err());
            }
            return Ok((Elem::Msg(other.to_string()), count));
        }
    };
    Ok((Elem::Prim(prim), count))
}

/// Parses a ROS 1 full definition of `root` (its text, then `MSG:` sections).
pub fn parse_full(root: &str, text: &str, dialect: Dialect) -> Result<Definitions, String> {
    let root = short_name(root);
    check_type_name(&root)?;
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
                let name = short_name(name);
                check_type_name(&name)?;
                last.0 = name;
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
    if msgs.len() > MAX_TYPES {
        return Err(format!("the definition names {} types, more than {MAX_TYPES}", msgs.len()));
    }
    let mut sizes = HashMap::new();
    let values = expanded_size(&root, &msgs, &mut sizes, &mut Vec::new())?;
    if values > MAX_VALUES {
        return Err(format!("one {root} expands to more than {MAX_VALUES} values before its sequences"));
    }
    Ok(Definitions { root, dialect, msgs })
}

/// How many values one `name` message makes, fixed arrays counted item by item and
/// sequences as one (saturating); an error for a type that contains itself.
fn expanded_size(
    name: &str,
    msgs: &HashMap<String, Vec<Field>>,
    sizes: &mut HashMap<String, usize>,
    path: &mut Vec<String>,
) -> Result<usize, String> {
    if let Some(size) = sizes.get(name) {
        return Ok(*size);
    }
    if path.iter().any(|p| p == name) {
        return Err(format!("{name} contains itself ({} → {name})", path.join(" → ")));
    }
    let fields = msgs.get(name).ok_or_else(|| format!("{name} is not defined"))?;
    path.push(name.to_string());
    let mut total: usize = 1;
    for f in fields {
        let one = match &f.elem {
            Elem::Prim(_) => 1,
            Elem::Msg(ty) => expanded_size(ty, msgs, sizes, path)?,
        };
        let times = match (f.count, &f.elem) {
            (Count::Fixed(_), Elem::Prim(Prim::U8)) => 1,
            (Count::Fixed(n), _) => n,
            (Count::One | Count::Seq, _) => 1,
        };
        total = total.saturating_add(one.saturating_mul(times)).min(usize::MAX / 2);
    }
    path.pop();
    sizes.insert(name.to_string(), total);
    Ok(total)
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

    #[test]
    fn type_names_are_package_and_type_only() {
        for bad in ["pkg//tmp/x/outside", "../x", "pkg/../../etc/passwd", "/abs/Type", "pkg/Ty pe", "pkg/msg/a/b", ""] {
            assert!(!is_type_name(&short_name(bad)), "{bad}");
        }
        for good in ["std_msgs/Header", "geometry_msgs/msg/Pose", "my_pkg2/Type_3"] {
            assert!(is_type_name(&short_name(good)), "{good}");
        }
        let e = parse_full("x/M", "x/../../etc/passwd f", Dialect::Ros1).unwrap_err();
        assert!(e.contains("not a ROS type name"), "{e}");
        assert!(parse_full("x/M", "int8 a\n===\nMSG: ../evil\nint8 b\n", Dialect::Ros1).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any text as a definition: parsed or refused, never a panic.
        #[test]
        fn any_definition_text_is_an_answer(root in "[a-z/]{0,12}", text in "(?s).{0,400}") {
            let _ = parse_full(&root, &text, Dialect::Ros1);
            let _ = parse_full(&root, &text, Dialect::Ros2);
        }

        /// Definitions built from real lines, nested, with arrays of any size.
        #[test]
        fn any_nesting_is_bounded(sizes in proptest::collection::vec(0usize..100_000, 1..8)) {
            let mut text = String::new();
            for (i, n) in sizes.iter().enumerate() {
                let next = if i + 1 == sizes.len() { "int8".to_string() } else { format!("T{}", i + 1) };
                if i > 0 { text.push_str(&format!("===\nMSG: x/T{i}\n")); }
                text.push_str(&format!("{next}[{n}] a\n"));
            }
            if let Ok(d) = parse_full("x/T0", &text, Dialect::Ros1) {
                let mut sizes = HashMap::new();
                proptest::prop_assert!(expanded_size(&d.root, &d.msgs, &mut sizes, &mut Vec::new()).unwrap() <= MAX_VALUES);
            }
        }
    }
}

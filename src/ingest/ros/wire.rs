//! Serialized ROS messages to JSON: ROS 1 serialization and ROS 2 CDR, walked field by
//! field with a message's [`Definitions`]. Pure, and every read is bounds-checked: a
//! payload that does not fit its definition is an error with the field it stopped at,
//! never a panic or an unbounded allocation. What it makes is paid for from a
//! [`Budget`] before it is made: an element that reads no bytes (an empty message)
//! still costs its JSON, so `Empty[4294967295]` is refused, not decoded.
//!
//! JSON shapes: a message is an object in field order; `uint8`/`byte`/`char` arrays are
//! bytes (`{"$base64": …}`, as elsewhere); a float JSON cannot hold (NaN, which ROS
//! messages use for "unknown") is `null`; ROS 1 `time`/`duration` are `{"sec", "nanosec"}`,
//! the names ROS 2's `builtin_interfaces/Time` has, so one route reads either bridge.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Number, Value};

use super::msgdef::{Count, Definitions, Dialect, Elem, Field, Prim};
use crate::ingest::budget::{self, Budget, SCALAR};
use crate::ingest::payload::BYTES_KEY;

/// Nested messages deeper than this are refused (a definition could name itself).
const MAX_DEPTH: usize = 32;

/// Decodes one whole message of `defs.root` from `bytes`.
pub fn decode(defs: &Definitions, bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(bytes, defs.dialect, Budget::for_input(bytes.len()))?;
    let value = r.message(defs, &defs.root, 0)?;
    r.finish()?;
    Ok(value)
}

/// How many bytes a serialized timestamp takes in front of a `stamped` message.
pub fn stamp_len(dialect: Dialect) -> usize {
    match dialect {
        Dialect::Ros1 => 8,
        // Its own CDR message: the encapsulation header, then `int32 sec, uint32 nanosec`.
        Dialect::Ros2 => 12,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where CDR alignment counts from (just after the encapsulation header).
    origin: usize,
    cdr: bool,
    big_endian: bool,
    budget: Budget,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], dialect: Dialect, budget: Budget) -> Result<Self, String> {
        if dialect == Dialect::Ros1 {
            return Ok(Reader { buf, pos: 0, origin: 0, cdr: false, big_endian: false, budget });
        }
        let big_endian = match buf.get(..2) {
            Some([0, 0]) => true,
            Some([0, 1]) => false,
            Some([a, b]) => {
                return Err(format!(
                    "the CDR encapsulation is {a:#04x}{b:02x}; only plain CDR (0x0000, 0x0001) is decoded"
                ));
            }
            _ => return Err("the payload is shorter than the CDR encapsulation header".into()),
        };
        if buf.len() < 4 {
            return Err("the payload is shorter than the CDR encapsulation header".into());
        }
        Ok(Reader { buf, pos: 4, origin: 4, cdr: true, big_endian, budget })
    }

    fn finish(&self) -> Result<(), String> {
        let rest = self.buf.len() - self.pos;
        // A CDR message is padded to a multiple of 4.
        if rest == 0 || (self.cdr && rest < 4) {
            Ok(())
        } else {
            Err(format!("{rest} bytes follow the message: the payload does not match the published type"))
        }
    }

    fn align(&mut self, n: usize) {
        if self.cdr {
            let off = (self.pos - self.origin) % n;
            if off != 0 {
                self.pos += n - off;
            }
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.align(N);
        let end = self.pos.checked_add(N).filter(|e| *e <= self.buf.len()).ok_or("the payload ends early")?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        if self.big_endian {
            out.reverse();
        }
        Ok(out)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("the payload ends early")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    /// A sequence length, checked against what is left so a corrupt one cannot
    /// allocate gigabytes.
    fn length(&mut self) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n > self.buf.len() - self.pos {
            return Err(format!(
                "the payload ends early: a length of {n} is more than the {} bytes left",
                self.buf.len() - self.pos
            ));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<Value, String> {
        let n = self.length()?;
        self.budget.spend(budget::string_cost(n))?;
        let raw = self.bytes(n)?;
        // CDR counts the terminating NUL.
        let raw = if self.cdr { raw.strip_suffix(&[0]).unwrap_or(raw) } else { raw };
        Ok(Value::String(String::from_utf8_lossy(raw).into_owned()))
    }

    fn prim(&mut self, p: Prim) -> Result<Value, String> {
        if !matches!(p, Prim::String) {
            // Time and duration are two scalars and their keys.
            let cost = if matches!(p, Prim::Time | Prim::Duration) { 2 * SCALAR + 20 } else { SCALAR };
            self.budget.spend(cost)?;
        }
        Ok(match p {
            Prim::Bool => Value::Bool(self.take::<1>()?[0] != 0),
            Prim::I8 => (self.take::<1>()?[0] as i8).into(),
            Prim::U8 => self.take::<1>()?[0].into(),
            Prim::I16 => i16::from_le_bytes(self.take()?).into(),
            Prim::U16 => u16::from_le_bytes(self.take()?).into(),
            Prim::I32 => i32::from_le_bytes(self.take()?).into(),
            Prim::U32 => self.u32()?.into(),
            Prim::I64 => i64::from_le_bytes(self.take()?).into(),
            Prim::U64 => u64::from_le_bytes(self.take()?).into(),
            Prim::F32 => float(f64::from(f32::from_le_bytes(self.take()?))),
            Prim::F64 => float(f64::from_le_bytes(self.take()?)),
            Prim::String => self.string()?,
            Prim::WString => return Err("wstring fields are not decoded".into()),
            Prim::Time => stamp(self.u32()?.into(), self.u32()?.into()),
            Prim::Duration => stamp(i32::from_le_bytes(self.take()?).into(), i32::from_le_bytes(self.take()?).into()),
        })
    }

    fn message(&mut self, defs: &Definitions, name: &str, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nest deeper than {MAX_DEPTH} at {name}"));
        }
        let fields = defs.msgs.get(name).ok_or_else(|| format!("{name} is not defined"))?;
        self.budget.spend(budget::CONTAINER)?;
        let mut out = Map::new();
        for f in fields {
            self.budget.spend(budget::string_cost(f.name.len()))?;
            let v = self.field(defs, f, depth).map_err(|e| format!("{name}.{}: {e}", f.name))?;
            out.insert(f.name.clone(), v);
        }
        Ok(Value::Object(out))
    }

    fn field(&mut self, defs: &Definitions, f: &Field, depth: usize) -> Result<Value, String> {
        let n = match f.count {
            Count::One => return self.elem(defs, &f.elem, depth),
            Count::Fixed(n) => n,
            Count::Seq => self.length()?,
        };
        if f.elem == Elem::Prim(Prim::U8) {
            self.budget.spend(budget::bytes_cost(n))?;
            let raw = self.bytes(n)?;
            return Ok(Value::Object(Map::from_iter([(BYTES_KEY.to_string(), B64.encode(raw).into())])));
        }
        self.budget.spend(budget::CONTAINER)?;
        let mut items = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        for _ in 0..n {
            items.push(self.elem(defs, &f.elem, depth)?);
        }
        Ok(Value::Array(items))
    }

    fn elem(&mut self, defs: &Definitions, e: &Elem, depth: usize) -> Result<Value, String> {
        match e {
            Elem::Prim(p) => self.prim(*p),
            Elem::Msg(name) => self.message(defs, name, depth + 1),
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn stamp(sec: Value, nanosec: Value) -> Value {
    Value::Object(Map::from_iter([("sec".to_string(), sec), ("nanosec".to_string(), nanosec)]))
}

#[cfg(test)]
mod tests {
    use super::super::msgdef::parse_full;
    use super::*;
    use serde_json::json;

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn ros1_packs_fields_without_padding() {
        let defs =
            parse_full("x/M", "uint8 a\nfloat64 b\nstring s\ntime t\nint16[] v\nuint8[2] raw", Dialect::Ros1).unwrap();
        let bytes = le(&[
            &[7],
            &1.5f64.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"hi",
            &10u32.to_le_bytes(),
            &20u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &(-1i16).to_le_bytes(),
            &3i16.to_le_bytes(),
            &[0xff, 0x00],
        ]);
        let v = decode(&defs, &bytes).unwrap();
        assert_eq!(
            v,
            json!({"a": 7, "b": 1.5, "s": "hi", "t": {"sec": 10, "nanosec": 20}, "v": [-1, 3], "raw": {"$base64": "/wA="}})
        );
        assert_eq!(
            v.to_string(),
            r#"{"a":7,"b":1.5,"s":"hi","t":{"sec":10,"nanosec":20},"v":[-1,3],"raw":{"$base64":"/wA="}}"#,
            "fields keep the message's order (header first, sec before nanosec), not the alphabet's"
        );
        let e = decode(&defs, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(e.contains("x/M.raw") && e.contains("ends early"), "{e}");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&defs, &longer).unwrap_err().contains("1 bytes follow"));
    }

    #[test]
    fn cdr_aligns_from_after_the_header_and_drops_string_nuls() {
        let defs = parse_full("x/M", "uint8 a\nfloat64 b\nstring s\nfloat32 nan", Dialect::Ros2).unwrap();
        let bytes = le(&[
            &[0, 1, 0, 0],
            &[7, 0, 0, 0, 0, 0, 0, 0],
            &1.5f64.to_le_bytes(),
            &3u32.to_le_bytes(),
            b"hi\0",
            &[0],
            &f32::NAN.to_le_bytes(),
        ]);
        assert_eq!(decode(&defs, &bytes).unwrap(), json!({"a": 7, "b": 1.5, "s": "hi", "nan": null}));
        let short = parse_full("x/S", "uint16 a", Dialect::Ros2).unwrap();
        assert_eq!(decode(&short, &[0, 0, 0, 0, 1, 2]).unwrap(), json!({"a": 258}), "big-endian CDR");
        assert_eq!(decode(&short, &[0, 1, 0, 0, 1, 2]).unwrap(), json!({"a": 513}));
        assert!(decode(&short, &[0, 7, 0, 0, 1, 2]).unwrap_err().contains("encapsulation"));
    }

    #[test]
    fn corrupt_lengths_and_self_nesting_are_errors() {
        let defs = parse_full("x/M", "int32[] v", Dialect::Ros1).unwrap();
        assert!(decode(&defs, &u32::MAX.to_le_bytes()).unwrap_err().contains("more than"));
        let looping = parse_full("x/M", "M inner", Dialect::Ros1).unwrap_err();
        assert!(looping.contains("contains itself"), "{looping}");
        let wide = parse_full("x/M", "wstring w", Dialect::Ros2).unwrap();
        assert!(decode(&wide, &[0, 1, 0, 0, 1, 0, 0, 0]).unwrap_err().contains("wstring"));
    }

    /// The red team's message: an array of empty messages reads no bytes per item.
    #[test]
    fn items_that_read_no_bytes_are_paid_for() {
        let huge = parse_full("x/M", "E[4294967295] items\n===\nMSG: x/E\n", Dialect::Ros1).unwrap_err();
        assert!(huge.contains("more than 65536 items"), "{huge}");
        let defs = parse_full("x/M", "E[60000] items\n===\nMSG: x/E\n", Dialect::Ros1).unwrap();
        let e = decode(&defs, &[]).unwrap_err();
        assert!(e.contains("x/M.items") && e.contains("refused"), "{e}");
        let small = parse_full("x/M", "E[100] items\n===\nMSG: x/E\n", Dialect::Ros1).unwrap();
        assert_eq!(decode(&small, &[]).unwrap()["items"].as_array().unwrap().len(), 100);
        // A sequence of empty messages: its length is bounded by the bytes left, and each
        // item is paid for.
        let seq = parse_full("x/M", "E[] items\n===\nMSG: x/E\n", Dialect::Ros1).unwrap();
        let mut bytes = 3000u32.to_le_bytes().to_vec();
        bytes.resize(4 + 3000, 0);
        assert!(decode(&seq, &bytes).unwrap_err().contains("bytes follow"), "decoded within budget, then refused");
    }

    /// A binary tree of empty messages 20 levels deep doubles at each level.
    #[test]
    fn type_trees_are_bounded_in_size_not_only_depth() {
        let mut text = String::from("T1 a\nT1 b\n");
        for level in 1..20 {
            text.push_str(&format!("===\nMSG: x/T{level}\nT{next} a\nT{next} b\n", next = level + 1));
        }
        text.push_str("===\nMSG: x/T20\n");
        let e = parse_full("x/M", &text, Dialect::Ros1).unwrap_err();
        assert!(e.contains("expands to more than 65536 values"), "{e}");
    }

    fn prim_type() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "bool", "int8", "uint8", "int16", "uint32", "int64", "float32", "float64", "string", "time", "E",
        ])
    }

    fn field_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prim_type(),
            prop_oneof![Just(String::new()), Just("[]".to_string()), (0usize..70_000).prop_map(|n| format!("[{n}]"))],
        )
            .prop_map(|(ty, arr)| format!("{ty}{arr} f"))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any definition, any bytes: an answer (a value or an error), never a panic, and
        /// a value within the budget.
        #[test]
        fn decoding_never_panics_and_stays_in_budget(
            root in proptest::collection::vec(field_line(), 0..6),
            empty in proptest::collection::vec(field_line(), 0..3),
            ros2 in proptest::bool::ANY,
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let text = format!("{}\n===\nMSG: x/E\n{}", root.join("\n"), empty.join("\n").replace("E", "uint8"));
            let dialect = if ros2 { Dialect::Ros2 } else { Dialect::Ros1 };
            if let Ok(defs) = parse_full("x/M", &text.replace("time", if ros2 { "int32" } else { "time" }), dialect) {
                if let Ok(v) = decode(&defs, &bytes) {
                    let limit = bytes.len() * crate::ingest::budget::EXPANSION + crate::ingest::budget::FLOOR;
                    proptest::prop_assert!(v.to_string().len() <= limit);
                }
            }
        }
    }
}

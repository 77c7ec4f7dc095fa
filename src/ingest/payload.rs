//! What a bridge publishes, as the JSON object a route reads: a route's `payload` says
//! how its messages are encoded. Pure: bytes in, a JSON object (the event's `data`) or
//! the reason it cannot be one out.
//!
//! | `payload` | accepts | `data` |
//! | --- | --- | --- |
//! | `json` (default) | a JSON object | the object, verbatim |
//! | `msgpack` | MessagePack (groove-x mqtt_bridge's default) | the value |
//! | `cbor` | CBOR | the value |
//! | `text` | UTF-8; numbers and `true`/`false` as such (ika mqtt_client's primitives) | `{"value": …}` |
//! | `binary` | any bytes | `{"base64": "…", "size": n}` |
//! | `auto` | any of these, told apart by content | as the format found |
//!
//! A decoded value that is not a map becomes `{"value": …}`. Bytes inside a MessagePack
//! or CBOR value become `{"$base64": "…"}` (JSON has no bytes); a map key that is not a
//! string becomes its JSON text (`1` → `"1"`); a float JSON cannot hold (NaN, infinity)
//! becomes `null`. An integer beyond 64 bits (CBOR's −2⁶⁴, a bignum tag, a long number
//! in text) stays exact as its decimal string (`"18446744073709551616"`): as a JSON
//! number most receivers would read it as a float and lose digits.
//!
//! What a decoder makes is bounded by [`crate::ingest::budget`]: at most 16 × the
//! payload's size plus 64 KiB of JSON, nested at most 64 deep; more is refused, and the
//! message quarantined with the reason.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Number, Value};

use super::budget::{self, Budget, SCALAR};
pub use crate::config::PayloadFormat;

/// The key that marks bytes inside a decoded value.
pub const BYTES_KEY: &str = "$base64";

/// A payload as an event's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Always a JSON object.
    pub value: Value,
    /// The payload itself when it was a JSON object: stored verbatim, as before there
    /// were other formats.
    pub verbatim: bool,
}

impl Decoded {
    pub(crate) fn of(value: Value) -> Decoded {
        let value = if value.is_object() { value } else { Value::Object(Map::from_iter([("value".into(), value)])) };
        Decoded { value, verbatim: false }
    }
}

/// Decodes `payload` as `format`; with `auto`, an MQTT 5 content type that names one of
/// the formats decides (`application/json`, `application/msgpack` or `x-msgpack`,
/// `application/cbor`, `text/plain`, `application/octet-stream`).
pub fn decode(format: PayloadFormat, payload: &[u8], content_type: Option<&str>) -> Result<Decoded, String> {
    let format = match (format, content_type.and_then(by_content_type)) {
        (PayloadFormat::Auto, Some(named)) => named,
        _ => format,
    };
    match format {
        PayloadFormat::Json => json_object(payload),
        PayloadFormat::Msgpack => msgpack(payload).map(Decoded::of),
        PayloadFormat::Cbor => cbor(payload).map(Decoded::of),
        PayloadFormat::Text => text(payload).map(Decoded::of),
        PayloadFormat::Binary => Ok(binary(payload)),
        PayloadFormat::Auto => Ok(auto(payload)),
        // Needs its topic's type: `Router` decodes these with `ros::RosTypes`.
        PayloadFormat::Ros => Err("a ROS message is decoded with its topic's type".into()),
    }
}

fn by_content_type(content_type: &str) -> Option<PayloadFormat> {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    Some(match essence.as_str() {
        "application/json" => PayloadFormat::Json,
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => PayloadFormat::Msgpack,
        "application/cbor" => PayloadFormat::Cbor,
        "text/plain" => PayloadFormat::Text,
        "application/octet-stream" => PayloadFormat::Binary,
        _ => return None,
    })
}

fn json_object(payload: &[u8]) -> Result<Decoded, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text, so not JSON".to_string())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    let kind = match value {
        Value::Object(_) => return Ok(Decoded { value, verbatim: true }),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(format!("payload is {kind}; a JSON object is expected (or set the route's payload format)"))
}

/// JSON of any kind, then MessagePack or CBOR when the first byte says a map or an
/// array and the whole payload decodes, then text, then bytes.
fn auto(payload: &[u8]) -> Decoded {
    if let Ok(text) = std::str::from_utf8(payload)
        && let Ok(value) = serde_json::from_str::<Value>(text)
    {
        return if value.is_object() { Decoded { value, verbatim: true } } else { Decoded::of(value) };
    }
    let first = payload.first().copied().unwrap_or(0);
    let msgpack_container = matches!(first, 0x80..=0x9f | 0xdc..=0xdf);
    if msgpack_container && let Ok(v) = msgpack(payload) {
        return Decoded::of(v);
    }
    // Major type 4 (array) or 5 (map), or the self-describe tag 55799.
    let cbor_container = matches!(first, 0x80..=0xbf) || payload.starts_with(&[0xd9, 0xd9, 0xf7]);
    if cbor_container && let Ok(v) = cbor(payload) {
        return Decoded::of(v);
    }
    match text(payload) {
        Ok(v) => Decoded::of(v),
        Err(_) => binary(payload),
    }
}

fn text(payload: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("payload is not UTF-8 text: {e}"))?;
    let t = text.trim();
    Ok(match t {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => number(t).unwrap_or_else(|| Value::String(text.to_string())),
    })
}

fn number(t: &str) -> Option<Value> {
    if let Ok(n) = t.parse::<i64>() {
        return Some(n.into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Some(n.into());
    }
    if is_integer_text(t) {
        // Beyond 64 bits: the digits as they were, not a float that loses them.
        return Some(Value::String(t.to_string()));
    }
    let looks_numeric = t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.');
    t.parse::<f64>().ok().filter(|_| looks_numeric).and_then(Number::from_f64).map(Value::Number)
}

fn is_integer_text(t: &str) -> bool {
    let digits = t.strip_prefix('-').unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An integer JSON can hold exactly as a number, else its decimal string.
fn integer(i: i128) -> Value {
    i64::try_from(i)
        .map(Value::from)
        .or_else(|_| u64::try_from(i).map(Value::from))
        .unwrap_or_else(|_| Value::String(i.to_string()))
}

/// CBOR's bignums (tag 2, positive; tag 3, −1 − n) up to 128 bits as exact integers;
/// longer ones stay bytes.
fn bignum(tag: u64, magnitude: &[u8]) -> Option<Value> {
    let significant = magnitude.iter().position(|&b| b != 0).map_or(&[][..], |i| &magnitude[i..]);
    if significant.len() > 16 {
        return None;
    }
    let n = significant.iter().fold(0u128, |n, &b| (n << 8) | u128::from(b));
    Some(match (tag, i128::try_from(n)) {
        (2, Ok(n)) => integer(n),
        (2, Err(_)) => Value::String(n.to_string()),
        (_, Ok(n)) => integer(-1 - n),
        (_, Err(_)) => Value::String(match n.checked_add(1) {
            Some(m) => format!("-{m}"),
            None => "-340282366920938463463374607431768211456".to_string(), // −2¹²⁸
        }),
    })
}

fn binary(payload: &[u8]) -> Decoded {
    let mut m = Map::new();
    m.insert("base64".into(), B64.encode(payload).into());
    m.insert("size".into(), payload.len().into());
    Decoded { value: Value::Object(m), verbatim: false }
}

fn bytes(b: &[u8]) -> Value {
    Value::Object(Map::from_iter([(BYTES_KEY.to_string(), Value::String(B64.encode(b)))]))
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A map key as JSON has them: strings as they are, anything else as its JSON text.
fn key(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn msgpack(payload: &[u8]) -> Result<Value, String> {
    let mut rest = payload;
    let value = rmpv::decode::read_value(&mut rest).map_err(|e| format!("payload is not MessagePack: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("payload is not one MessagePack value: {} bytes follow it", rest.len()));
    }
    from_msgpack(value, &mut Budget::for_input(payload.len()), 0)
}

/// One MessagePack value as JSON, paid for from `budget` as it is made.
fn from_msgpack(v: rmpv::Value, budget: &mut Budget, depth: usize) -> Result<Value, String> {
    use rmpv::Value as M;
    Budget::check_depth(depth)?;
    budget.spend(match &v {
        M::String(s) => budget::string_cost(s.as_bytes().len()),
        M::Binary(b) => budget::bytes_cost(b.len()),
        M::Ext(_, data) => budget::bytes_cost(data.len()).saturating_add(16),
        M::Array(_) | M::Map(_) => budget::CONTAINER,
        _ => SCALAR,
    })?;
    Ok(match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => i.as_i64().map(Value::from).or_else(|| i.as_u64().map(Value::from)).unwrap_or(Value::Null),
        M::F32(f) => float(f64::from(f)),
        M::F64(f) => float(f),
        M::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => Value::Null,
        },
        M::Binary(b) => bytes(&b),
        M::Array(a) => {
            Value::Array(a.into_iter().map(|v| from_msgpack(v, budget, depth + 1)).collect::<Result<_, _>>()?)
        }
        M::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| Ok((key(from_msgpack(k, budget, depth + 1)?), from_msgpack(v, budget, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        ),
        M::Ext(kind, data) => {
            let mut m = Map::new();
            m.insert("$ext".into(), kind.into());
            m.insert(BYTES_KEY.into(), B64.encode(data).into());
            Value::Object(m)
        }
    })
}

fn cbor(payload: &[u8]) -> Result<Value, String> {
    let mut reader = std::io::Cursor::new(payload);
    let value: ciborium::Value =
        ciborium::de::from_reader(&mut reader).map_err(|e| format!("payload is not CBOR: {e}"))?;
    let rest = payload.len() - reader.position() as usize;
    if rest > 0 {
        return Err(format!("payload is not one CBOR value: {rest} bytes follow it"));
    }
    from_cbor(value, &mut Budget::for_input(payload.len()), 0)
}

/// One CBOR value as JSON, paid for from `budget` as it is made.
fn from_cbor(v: ciborium::Value, budget: &mut Budget, depth: usize) -> Result<Value, String> {
    use ciborium::Value as C;
    Budget::check_depth(depth)?;
    budget.spend(match &v {
        C::Text(s) => budget::string_cost(s.len()),
        C::Bytes(b) => budget::bytes_cost(b.len()),
        C::Array(_) | C::Map(_) | C::Tag(..) => budget::CONTAINER,
        _ => SCALAR,
    })?;
    Ok(match v {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(b),
        C::Integer(i) => integer(i128::from(i)),
        C::Float(f) => float(f),
        C::Text(s) => Value::String(s),
        C::Bytes(b) => bytes(&b),
        // A tag (a date, a big number, self-description) says how to read its value;
        // the value is what a route can use.
        C::Tag(tag, inner) => match *inner {
            C::Bytes(b) if matches!(tag, 2 | 3) => match bignum(tag, &b) {
                Some(n) => n,
                None => from_cbor(C::Bytes(b), budget, depth + 1)?,
            },
            inner => from_cbor(inner, budget, depth + 1)?,
        },
        C::Array(a) => Value::Array(a.into_iter().map(|v| from_cbor(v, budget, depth + 1)).collect::<Result<_, _>>()?),
        C::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| Ok((key(from_cbor(k, budget, depth + 1)?), from_cbor(v, budget, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        ),
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(format: PayloadFormat, payload: &[u8]) -> Value {
        decode(format, payload, None).unwrap().value
    }

    #[test]
    fn json_stays_as_it_was() {
        let d = decode(PayloadFormat::Json, br#"{"a":1}"#, None).unwrap();
        assert!(d.verbatim);
        assert_eq!(d.value, json!({"a": 1}));
        let e = decode(PayloadFormat::Json, b"42", None).unwrap_err();
        assert!(e.starts_with("payload is a number; a JSON object is expected"), "{e}");
    }

    #[test]
    fn primitives_as_ika_sends_them() {
        assert_eq!(data(PayloadFormat::Text, b"42"), json!({"value": 42}));
        assert_eq!(data(PayloadFormat::Text, b"-0.5"), json!({"value": -0.5}));
        assert_eq!(data(PayloadFormat::Text, b"true"), json!({"value": true}));
        assert_eq!(data(PayloadFormat::Text, b"docking"), json!({"value": "docking"}));
        assert_eq!(data(PayloadFormat::Text, b"inf"), json!({"value": "inf"}), "no float JSON cannot hold");
        assert!(decode(PayloadFormat::Text, &[0xff, 0xfe], None).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn msgpack_maps_arrays_bytes_and_odd_keys() {
        // {"kind": "lidar", "level": 3, "raw": bin(01 02), 7: nil}
        let payload = [
            0x84, 0xa4, b'k', b'i', b'n', b'd', 0xa5, b'l', b'i', b'd', b'a', b'r', 0xa5, b'l', b'e', b'v', b'e', b'l',
            0x03, 0xa3, b'r', b'a', b'w', 0xc4, 0x02, 0x01, 0x02, 0x07, 0xc0,
        ];
        assert_eq!(
            data(PayloadFormat::Msgpack, &payload),
            json!({"kind": "lidar", "level": 3, "raw": {"$base64": "AQI="}, "7": null})
        );
        assert_eq!(
            data(PayloadFormat::Msgpack, &payload).to_string(),
            r#"{"kind":"lidar","level":3,"raw":{"$base64":"AQI="},"7":null}"#,
            "keys keep the order they were sent in"
        );
        assert_eq!(data(PayloadFormat::Msgpack, &[0x93, 1, 2, 3]), json!({"value": [1, 2, 3]}));
        assert!(decode(PayloadFormat::Msgpack, &[0x92, 1], None).unwrap_err().contains("not MessagePack"));
        assert!(decode(PayloadFormat::Msgpack, &[0x01, 0x02], None).unwrap_err().contains("bytes follow"));
    }

    #[test]
    fn cbor_maps_tags_and_big_numbers() {
        // {"a": 1(1700000000), "b": h'0102', "c": 18446744073709551615}
        let payload = [
            0xa3, 0x61, b'a', 0xc1, 0x1a, 0x65, 0x53, 0xf1, 0x00, 0x61, b'b', 0x42, 0x01, 0x02, 0x61, b'c', 0x1b, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(
            data(PayloadFormat::Cbor, &payload),
            json!({"a": 1700000000, "b": {"$base64": "AQI="}, "c": 18446744073709551615u64})
        );
        assert!(decode(PayloadFormat::Cbor, &[0xa1, 0x61], None).unwrap_err().contains("not CBOR"));
    }

    #[test]
    fn integers_beyond_64_bits_stay_exact() {
        // CBOR −2⁶⁴ (major type 1, argument 2⁶⁴ − 1), as cbor2.dumps(-2**64) writes it.
        let minus_2_64 = [0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data(PayloadFormat::Cbor, &minus_2_64), json!({"value": "-18446744073709551616"}));
        // Bignums: tag 2 over 2⁶⁴ (cbor2.dumps(2**64)), tag 3 over 2⁶⁴ (−2⁶⁴ − 1), and a small one.
        let two_64 = [0xc2, 0x49, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(data(PayloadFormat::Cbor, &two_64), json!({"value": "18446744073709551616"}));
        let below = [0xc3, 0x49, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(data(PayloadFormat::Cbor, &below), json!({"value": "-18446744073709551617"}));
        assert_eq!(data(PayloadFormat::Cbor, &[0xc2, 0x41, 0x07]), json!({"value": 7}));
        let big_negative = [vec![0xc3, 0x50, 0x7f], vec![0xff; 15]].concat();
        assert_eq!(
            data(PayloadFormat::Cbor, &big_negative),
            json!({"value": "-170141183460469231731687303715884105728"})
        );
        // ciborium itself refuses a negative bignum past −2¹²⁷: quarantined with its reason.
        let past = [vec![0xc3, 0x50], vec![0xff; 16]].concat();
        assert!(decode(PayloadFormat::Cbor, &past, None).unwrap_err().contains("integer too large"));
        let huge = [vec![0xc2, 0x51], vec![0xff; 17]].concat();
        assert!(data(PayloadFormat::Cbor, &huge)["$base64"].is_string(), "over 128 bits stays bytes");
        // Text: digits past u64 stay digits; a float is still a number.
        assert_eq!(data(PayloadFormat::Text, b"18446744073709551616"), json!({"value": "18446744073709551616"}));
        assert_eq!(data(PayloadFormat::Text, b"-99999999999999999999"), json!({"value": "-99999999999999999999"}));
        assert_eq!(data(PayloadFormat::Text, b"1e3"), json!({"value": 1000.0}));
    }

    #[test]
    fn auto_tells_them_apart() {
        assert!(decode(PayloadFormat::Auto, br#"{"a":1}"#, None).unwrap().verbatim);
        assert_eq!(data(PayloadFormat::Auto, b"42"), json!({"value": 42}));
        assert_eq!(data(PayloadFormat::Auto, b"docking"), json!({"value": "docking"}));
        assert_eq!(data(PayloadFormat::Auto, &[0x81, 0xa1, b'a', 0x01]), json!({"a": 1}), "msgpack");
        assert_eq!(data(PayloadFormat::Auto, &[0xa1, 0x61, b'a', 0x01]), json!({"a": 1}), "cbor");
        assert_eq!(data(PayloadFormat::Auto, &[0xff, 0x00]), json!({"base64": "/wA=", "size": 2}));
        // An MQTT 5 content type decides over the content.
        let named = decode(PayloadFormat::Auto, b"42", Some("text/plain; charset=utf-8")).unwrap();
        assert_eq!(named.value, json!({"value": 42}));
        let e = decode(PayloadFormat::Auto, b"42", Some("application/msgpack")).unwrap_err();
        assert!(e.contains("bytes follow"), "{e}");
        let fixed = decode(PayloadFormat::Json, br#"{"a":1}"#, Some("application/cbor")).unwrap();
        assert!(fixed.verbatim, "a route's own format is not overridden");
    }

    #[test]
    fn deep_and_wide_values_are_refused() {
        // 100 nested one-element arrays: rmpv and ciborium read them; the budget refuses them.
        let deep_msgpack = [vec![0x91; 100], vec![0x01]].concat();
        let e = decode(PayloadFormat::Msgpack, &deep_msgpack, None).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
        let deep_cbor = [vec![0x81; 100], vec![0x01]].concat();
        assert!(decode(PayloadFormat::Cbor, &deep_cbor, None).unwrap_err().contains("deeper than 64"));
        // Tags cost their nesting too.
        let tagged = [vec![0xc1; 100], vec![0x01]].concat();
        assert!(decode(PayloadFormat::Cbor, &tagged, None).is_err());
        // 60 nested levels are fine.
        let ok = [vec![0x91; 60], vec![0x01]].concat();
        assert!(decode(PayloadFormat::Msgpack, &ok, None).is_ok());
    }

    fn any_format() -> impl proptest::strategy::Strategy<Value = PayloadFormat> {
        proptest::sample::select(vec![
            PayloadFormat::Json,
            PayloadFormat::Msgpack,
            PayloadFormat::Cbor,
            PayloadFormat::Text,
            PayloadFormat::Binary,
            PayloadFormat::Auto,
        ])
    }

    /// Bytes that look like MessagePack or CBOR containers most of the time.
    fn containerish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let byte = prop_oneof![
            4 => 0x80u8..=0x9f,
            2 => 0xc0u8..=0xdf,
            2 => 0xd4u8..=0xd8,
            1 => any::<u8>(),
        ];
        proptest::collection::vec(byte, 0..600)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any bytes in any format: a value within budget, or a reason; never a panic.
        #[test]
        fn every_decoder_answers_within_budget(
            format in any_format(),
            bytes in proptest::prop_oneof![containerish(), proptest::collection::vec(proptest::num::u8::ANY, 0..600)],
        ) {
            if let Ok(d) = decode(format, &bytes, None) {
                proptest::prop_assert!(d.value.is_object());
                let limit = bytes.len() * budget::EXPANSION + budget::FLOOR;
                proptest::prop_assert!(d.value.to_string().len() <= limit);
            }
        }
    }
}

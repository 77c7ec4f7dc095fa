//! Text from the wire (topics, event types, device ids, payload excerpts) on its way to a
//! log line, a CLI table or an HTTP header. A payload must not be able to forge a log line
//! (`\n` followed by something that looks like ours) or drive the terminal (`ESC [`).

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character escaped (`\n`, `\u{1b}`); other text unchanged.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` as an HTTP header value: visible ASCII as it is, every other byte percent-encoded
/// (`agv-ü` → `agv-%C3%BC`), spaces too (HTTP trims them at either end of a value) and
/// `%` itself, so that decoding is exact. The body keeps the original text.
pub fn header_value(s: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_graphic() && b != b'%';
    if s.bytes().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("mission.done"), "mission.done");
        assert_eq!(printable("x\n2026 ERROR forged\u{1b}[31mRED"), "x\\n2026 ERROR forged\\u{1b}[31mRED");
        assert_eq!(printable("agv-ü\t"), "agv-ü\\t");
        assert!(!printable("a\r\u{7f}\u{9b}b").chars().any(char::is_control));
    }

    #[test]
    fn header_values_are_percent_encoded_beyond_visible_ascii() {
        assert_eq!(header_value("mission.completed"), "mission.completed");
        assert_eq!(header_value("agv-ü"), "agv-%C3%BC");
        assert_eq!(header_value("50%\r\nX-Evil: 1"), "50%25%0D%0AX-Evil:%201");
        assert_eq!(header_value(" agv 7 "), "%20agv%207%20", "spaces at the ends would be trimmed");
        assert!(reqwest::header::HeaderValue::from_str(&header_value("\u{0}\u{7f}ü€")).is_ok());
    }
}

//! What a decoder may make of its input: every payload decoder (ROS 1, CDR, MessagePack,
//! CBOR, text, binary, auto) turns bytes into a JSON value, and a hostile payload must not
//! be able to turn a few bytes into gigabytes (a ROS array of empty messages reads no
//! bytes per element; a type tree of empty messages doubles at each level).
//!
//! The rule, the same for every decoder: the decoded value's JSON text may be at most
//! [`EXPANSION`] times the payload's size plus [`FLOOR`] bytes (so at most
//! `16 × mqtt.max_payload + 64 KiB`), and nest at most [`MAX_DEPTH`] deep. The cost is
//! counted while decoding, before anything is allocated for it, so a refused payload
//! costs no more memory than an accepted one could. What goes over is quarantined with
//! the reason. See docs/decisions.md, "Decoders with budgets".

/// The decoded JSON may be this many times the payload's size...
pub const EXPANSION: usize = 16;
/// ...plus this much, so that small messages with long field names always fit.
pub const FLOOR: usize = 64 * 1024;
/// Deepest nesting of arrays and objects in a decoded value. serde_json reads back at
/// most 128 levels, and an event's data sits inside its envelope.
pub const MAX_DEPTH: usize = 64;

/// An estimate of the JSON text still allowed, spent as values are decoded.
#[derive(Debug)]
pub struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    /// The budget for a payload of `input_len` bytes.
    pub fn for_input(input_len: usize) -> Budget {
        let limit = input_len.saturating_mul(EXPANSION).saturating_add(FLOOR);
        Budget { left: limit, limit }
    }

    /// Spends `cost` bytes of JSON text; an error once the budget is gone.
    pub fn spend(&mut self, cost: usize) -> Result<(), String> {
        match self.left.checked_sub(cost) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "the decoded value would be over {} bytes of JSON ({EXPANSION} × the payload + {} KiB): refused",
                self.limit,
                FLOOR / 1024
            )),
        }
    }

    /// An error when `depth` is deeper than [`MAX_DEPTH`].
    pub fn check_depth(depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("the value nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }
}

/// What an array or object costs before its items: more than its JSON text (`[]`), as
/// each value also takes about 32 bytes of memory while it is decoded; an empty array
/// read from one byte of MessagePack must not be nearly free.
pub const CONTAINER: usize = 8;

/// What a scalar costs as JSON text, at most (`-9223372036854775808`, a float's 24
/// characters, and a separator).
pub const SCALAR: usize = 26;

/// What a string of `len` bytes costs as JSON text (quotes and a separator; escapes are
/// not counted, they at most sextuple control characters, which the factor covers).
pub fn string_cost(len: usize) -> usize {
    len.saturating_add(3)
}

/// What `len` bytes cost as `{"$base64":"…"}`.
pub fn bytes_cost(len: usize) -> usize {
    len.div_ceil(3).saturating_mul(4).saturating_add(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_payload_times_sixteen_plus_the_floor() {
        let mut b = Budget::for_input(100);
        assert!(b.spend(1600 + FLOOR).is_ok());
        let e = b.spend(1).unwrap_err();
        assert!(e.contains("over 67136 bytes"), "{e}");
        let mut huge = Budget::for_input(usize::MAX);
        assert!(huge.spend(usize::MAX).is_ok(), "saturates instead of overflowing");
        assert!(Budget::check_depth(MAX_DEPTH).is_ok());
        assert!(Budget::check_depth(MAX_DEPTH + 1).is_err());
    }
}

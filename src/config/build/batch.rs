//! A subscription's `batch`: several envelopes in one request (`delivery::batch`).

use std::time::Duration;

use serde::Serialize;

use super::super::range::{self, duration_in, size_in};
use super::super::raw::RawBatch;
use super::super::{Format, ser_duration, ser_size};
use super::{Issues, KeyPath, count, opt};

/// `batch = { max_events, max_bytes, max_wait, format }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Batch {
    pub max_events: usize,
    /// The body's size before compression.
    #[serde(serialize_with = "ser_size")]
    pub max_bytes: u64,
    /// How long the first event of a batch waits for the rest.
    #[serde(serialize_with = "ser_duration")]
    pub max_wait: Duration,
    pub format: BatchFormat,
}

/// How a batch's envelopes are put in one body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchFormat {
    /// A JSON array of envelopes (`application/json`).
    Array,
    /// One envelope per line (`application/x-ndjson`).
    Ndjson,
}

pub const DEFAULT_EVENTS: u64 = 100;
pub const DEFAULT_BYTES: u64 = 256 << 10;
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// `batch` under `p`; what it leaves out comes from `base` (the subscription's own batch,
/// for `metered.batch`), else the defaults.
pub(super) fn build(
    raw: &RawBatch,
    format: Format,
    p: &KeyPath,
    issues: &mut Issues,
    base: Option<&Batch>,
) -> Option<Batch> {
    let at = p.key("batch");
    if format != Format::Envelope {
        let name = format!("{format:?}").to_lowercase();
        issues.push(
            at.clone(),
            format!("batch is for format = \"envelope\" endpoints; {name} takes one event per request"),
        );
        return None;
    }
    let default = base.cloned().unwrap_or(Batch {
        max_events: DEFAULT_EVENTS as usize,
        max_bytes: DEFAULT_BYTES,
        max_wait: DEFAULT_WAIT,
        format: BatchFormat::Array,
    });
    let max_events =
        count(issues, at.key("max_events"), raw.max_events, range::BATCH_EVENTS, default.max_events as u64);
    let max_bytes =
        opt(issues, at.key("max_bytes"), raw.max_bytes.as_ref(), size_in(range::BATCH_BYTES), default.max_bytes);
    let max_wait =
        opt(issues, at.key("max_wait"), raw.max_wait.as_ref(), duration_in(range::BATCH_WAIT), default.max_wait);
    let format = opt(
        issues,
        at.key("format"),
        raw.format.as_ref(),
        |v| match v {
            "array" | "json" => Ok(BatchFormat::Array),
            "ndjson" => Ok(BatchFormat::Ndjson),
            o => Err(format!("`{o}` is not array or ndjson")),
        },
        default.format,
    );
    Some(Batch { max_events: max_events as usize, max_bytes, max_wait, format })
}

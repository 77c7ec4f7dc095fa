//! The link: `[link] max_rate` for everything the agent sends, the `[link.metered]`
//! profile that `fleethook link metered` switches to, and each subscription's own
//! `max_rate`, `daily_budget` and `metered = { … }` overrides.

use serde::{Serialize, Serializer};

use super::super::range::{self, size_in};
use super::super::raw::{RawLink, RawMeteredSubscription, RawSubscription};
use super::super::{Format, ser_size, size_text};
use super::batch::{self, Batch};
use super::{Issues, KeyPath, opt};

/// `[link]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkConfig {
    /// Request bytes per second for all subscriptions together; None: no cap.
    #[serde(serialize_with = "ser_byte_rate")]
    pub max_rate: Option<u64>,
    pub metered: MeteredProfile,
}

impl LinkConfig {
    /// The rate for everything in the profile in force.
    pub fn max_rate_in(&self, metered: bool) -> Option<u64> {
        if metered { self.metered.max_rate.or(self.max_rate) } else { self.max_rate }
    }
}

/// `[link.metered]`: what changes while the link is metered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeteredProfile {
    /// Replaces `[link] max_rate`; None keeps it.
    #[serde(serialize_with = "ser_byte_rate")]
    pub max_rate: Option<u64>,
    pub hold: Hold,
}

/// Which priorities wait while the link is metered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hold {
    None,
    /// Low-priority events wait (the default).
    #[default]
    Low,
    /// Normal and low wait: only high goes.
    Normal,
}

impl Hold {
    /// The lowest priority that still goes (`Priority as i64`: 0 high, 2 low).
    pub fn lowest_sent(self) -> i64 {
        match self {
            Hold::None => 2,
            Hold::Low => 1,
            Hold::Normal => 0,
        }
    }
}

/// A subscription's `metered = { max_rate, daily_budget, batch }`: each replaces the
/// subscription's own while the link is metered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MeteredSubscription {
    #[serde(serialize_with = "ser_byte_rate")]
    pub max_rate: Option<u64>,
    #[serde(serialize_with = "ser_opt_size")]
    pub daily_budget: Option<u64>,
    pub batch: Option<Batch>,
}

pub(super) fn build(raw: &RawLink, p: KeyPath, issues: &mut Issues) -> LinkConfig {
    let max_rate = rate(issues, p.key("max_rate"), raw.max_rate.as_ref());
    let metered = raw.metered.as_ref().map_or_else(MeteredProfile::default, |m| {
        let at = p.key("metered");
        MeteredProfile {
            max_rate: rate(issues, at.key("max_rate"), m.max_rate.as_ref()),
            hold: opt(
                issues,
                at.key("hold"),
                m.hold.as_ref(),
                |v| match v {
                    "none" => Ok(Hold::None),
                    "low" => Ok(Hold::Low),
                    "normal" => Ok(Hold::Normal),
                    o => Err(format!("`{o}` is not none, low or normal (normal holds normal and low)")),
                },
                Hold::Low,
            ),
        }
    });
    LinkConfig { max_rate, metered }
}

/// A subscription's `max_rate`, `daily_budget` and `metered`.
pub(super) fn subscription(
    s: &RawSubscription,
    format: Format,
    batch: Option<&Batch>,
    p: &KeyPath,
    issues: &mut Issues,
) -> (Option<u64>, Option<u64>, Option<MeteredSubscription>) {
    let max_rate = rate(issues, p.key("max_rate"), s.max_rate.as_ref());
    let daily = budget(issues, p.key("daily_budget"), s.daily_budget.as_ref());
    let metered = s.metered.as_ref().map(|m| metered(m, format, batch, &p.key("metered"), issues));
    (max_rate, daily, metered)
}

fn metered(
    m: &RawMeteredSubscription,
    format: Format,
    base: Option<&Batch>,
    at: &KeyPath,
    issues: &mut Issues,
) -> MeteredSubscription {
    let batch = m.batch.as_ref().and_then(|b| {
        let Some(base) = base else {
            issues
                .push(at.key("batch"), "metered.batch changes a batch's sizes; set the subscription's own batch first");
            return None;
        };
        batch::build(b, format, at, issues, Some(base))
    });
    MeteredSubscription {
        max_rate: rate(issues, at.key("max_rate"), m.max_rate.as_ref()),
        daily_budget: budget(issues, at.key("daily_budget"), m.daily_budget.as_ref()),
        batch,
    }
}

fn rate(issues: &mut Issues, path: KeyPath, v: Option<&String>) -> Option<u64> {
    v.and_then(|v| issues.take(path, range::byte_rate(v)))
}

fn budget(issues: &mut Issues, path: KeyPath, v: Option<&String>) -> Option<u64> {
    v.and_then(|v| issues.take(path, size_in(range::DAILY_BUDGET)(v)))
}

pub fn ser_byte_rate<S: Serializer>(rate: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) => s.serialize_str(&format!("{}/s", size_text(*r))),
        None => s.serialize_none(),
    }
}

pub fn ser_opt_size<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => ser_size(n, s),
        None => s.serialize_none(),
    }
}

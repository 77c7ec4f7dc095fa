//! Clocks (docs/decisions.md, "Clocks"). Robots boot in 1970 or at the last saved time, and NTP
//! steps the wall clock later, by years, in either direction. So:
//!
//! - **The schedule clock** ([`sched_ms`]) decides everything that waits: retry times,
//!   offline probes, TTL ages, the writer's sweeps. It is milliseconds on
//!   `CLOCK_BOOTTIME` (which counts suspend and never jumps), re-based across restarts
//!   from what the outbox saved (`meta`): within one boot by boottime itself (time the
//!   agent was down counts), across a reboot by the wall clock only when it was synced
//!   both at the save and now (otherwise the robot's power-off time is not counted: a
//!   `max_age` counts time the robot was up, plus off-time a synced clock can vouch
//!   for). A new outbox starts it at the wall clock, so rows written before this clock
//!   existed keep their meaning.
//! - **The wall clock** ([`crate::event::now_ms`]) only dates things for people: the
//!   envelope's `timestamp`, audit rows, `show`.
//! - **Its quality** ([`quality`]): `synced` (the kernel says NTP or similar disciplines
//!   it), `unsynced`, or `wrong` (before this binary was built).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Milliseconds on `CLOCK_BOOTTIME`.
pub fn boottime_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    // The conversions matter on armv7, where time_t and long are 32 bits.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    secs * 1000 + nanos / 1_000_000
}

/// This boot's id (the kernel's `boot_id`, a random UUID), its low 64 bits to fit an
/// integer column; read once.
pub fn boot_id() -> i64 {
    static ID: OnceLock<i64> = OnceLock::new();
    *ID.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        boot_id_of(&id)
    })
}

fn boot_id_of(text: &str) -> i64 {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16).map(|v| v as u64 as i64).unwrap_or(0)
}

/// What the schedule clock was, saved with a commit, to continue from after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub sched_ms: i64,
    pub boot_id: i64,
    pub boottime_ms: i64,
    pub wall_ms: i64,
    pub synced: bool,
}

/// Where the schedule clock stands now, given what was saved (pure: tests feed it).
pub fn rebase(saved: Option<&Saved>, now: &Saved) -> i64 {
    let Some(s) = saved else { return now.wall_ms };
    if s.boot_id == now.boot_id && now.boottime_ms >= s.boottime_ms {
        return s.sched_ms + (now.boottime_ms - s.boottime_ms);
    }
    // Another boot: the off-time counts only if a synced clock measured it.
    let off = if s.synced && now.synced { (now.wall_ms - s.wall_ms).max(0) } else { 0 };
    s.sched_ms + off
}

/// `sched_ms` at `boottime_ms`.
static BASE: OnceLock<(i64, i64)> = OnceLock::new();

/// Starts the schedule clock from what the outbox saved (once per process; later calls,
/// such as a second outbox in a test, keep the first).
pub fn start(saved: Option<&Saved>) {
    let now = here();
    BASE.get_or_init(|| (rebase(saved, &now), now.boottime_ms));
}

/// Now on the schedule clock.
pub fn sched_ms() -> i64 {
    let (base, at) = *BASE.get_or_init(|| (crate::event::now_ms(), boottime_ms()));
    base + (boottime_ms() - at)
}

/// The schedule clock's reading now, ready to save.
pub fn here() -> Saved {
    let boottime = boottime_ms();
    let sched = BASE.get().map(|(base, at)| base + (boottime - at)).unwrap_or(0);
    Saved {
        sched_ms: sched,
        boot_id: boot_id(),
        boottime_ms: boottime,
        wall_ms: crate::event::now_ms(),
        synced: quality() == Quality::Synced,
    }
}

/// Where an event was taken on the boot's own clock, kept when the wall clock was not
/// known good at the time, so that its timestamp can be made true later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Taken {
    pub boot_id: i64,
    pub boottime_ms: i64,
}

/// Where we are now, if the wall clock is not known good (else nothing to keep).
pub fn taken_unless_synced() -> Option<Taken> {
    (quality() != Quality::Synced).then(|| Taken { boot_id: boot_id(), boottime_ms: boottime_ms() })
}

/// An event's timestamp as it should be sent, and if it is still unsure, what the clock
/// was when it was taken: an event taken while the clock was not good is re-dated from
/// the wall clock once that is good, by the boottime since (same boot only); otherwise
/// its timestamp is sent as it was, labelled as it was taken (see [`taken_quality`]).
pub fn dated(created_ms: i64, taken: Option<Taken>) -> (i64, Option<Quality>) {
    let Some(t) = taken else { return (created_ms, None) };
    let (ms, unsure) = redate(created_ms, t, quality(), boot_id(), boottime_ms(), crate::event::now_ms());
    (ms, unsure.then(|| taken_quality(created_ms, built_s())))
}

/// Pure: the label of a timestamp that could not be made true. A time before this
/// binary was built was taken under a clock classified `wrong` (that is the rule of
/// [`classify`]); any other was merely `unsynced`, whatever the clock is now.
pub fn taken_quality(created_ms: i64, built_s: i64) -> Quality {
    if created_ms.div_euclid(1000) < built_s { Quality::Wrong } else { Quality::Unsynced }
}

/// Pure: see [`dated`].
pub fn redate(created_ms: i64, t: Taken, quality: Quality, boot: i64, boottime: i64, wall: i64) -> (i64, bool) {
    if quality == Quality::Synced && t.boot_id == boot && boottime >= t.boottime_ms {
        (wall - (boottime - t.boottime_ms), false)
    } else {
        (created_ms, true)
    }
}

/// A time on the schedule clock as a wall-clock time, for people.
pub fn to_wall_ms(sched: i64) -> i64 {
    crate::event::now_ms() + (sched - sched_ms())
}

/// Whether the wall clock can be believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Synced,
    /// Not synced, and no time service is at work on it: it may never be.
    Unsynced,
    /// Not synced yet, but a time service (timesyncd, chrony, ntpd) is running: it will
    /// be, typically within minutes of the network.
    Syncing,
    /// Before this binary was built: certainly wrong.
    Wrong,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Synced => "synced",
            Quality::Unsynced => "unsynced",
            Quality::Syncing => "syncing",
            Quality::Wrong => "wrong",
        }
    }
}

/// A date this binary is surely not older than (Unix seconds): `SOURCE_DATE_EPOCH` as
/// reproducible builds (Debian's included) set it, else this release's floor, 2025-12-01.
fn built_s() -> i64 {
    option_env!("SOURCE_DATE_EPOCH").and_then(|s| s.parse().ok()).unwrap_or(1_764_547_200)
}

/// The kernel's view (adjtimex: `STA_UNSYNC` clear means disciplined), the build date as
/// a floor, and whether a time service is running. `FLEETHOOK_CLOCK=synced|unsynced|syncing`
/// overrides the kernel and the service, for tests and for robots whose time source the
/// kernel does not know (GPS, PTP in user space).
///
/// Asked per event, so the answer is kept for a second.
pub fn quality() -> Quality {
    static LAST: std::sync::Mutex<Option<(i64, Quality)>> = std::sync::Mutex::new(None);
    let now = boottime_ms();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, q)) = *last
        && now - at < 1000
    {
        return q;
    }
    let q = quality_now();
    *last = Some((now, q));
    q
}

fn quality_now() -> Quality {
    let forced = std::env::var("FLEETHOOK_CLOCK").ok().and_then(|v| match v.as_str() {
        "synced" => Some(Quality::Synced),
        "unsynced" => Some(Quality::Unsynced),
        "syncing" => Some(Quality::Syncing),
        _ => None,
    });
    let now_s = crate::event::now_ms() / 1000;
    match forced {
        Some(q) => classify(now_s, built_s(), Some(q != Quality::Synced), q == Quality::Syncing),
        None => {
            let kernel = kernel_unsynced();
            // Only looked for when it matters.
            let service = kernel == Some(true) && time_service_running();
            classify(now_s, built_s(), kernel, service)
        }
    }
}

/// Pure: the wall clock `now_s` against the build date, whether the clock is known
/// unsynced (`unsynced`: None when there is no way to tell), and whether a time service
/// is at work.
pub fn classify(now_s: i64, built_s: i64, unsynced: Option<bool>, service: bool) -> Quality {
    if now_s < built_s {
        return Quality::Wrong;
    }
    match unsynced {
        Some(true) if service => Quality::Syncing,
        Some(true) => Quality::Unsynced,
        Some(false) => Quality::Synced,
        // No way to tell (not Linux, or adjtimex denied): past the build date is good.
        None => Quality::Synced,
    }
}

/// Traces a running time service leaves in /run: systemd's record of an active unit,
/// and the daemons' pid files (on tmpfs, so gone after a reboot). Readable under the
/// hardened unit; a pid file cannot be checked against /proc there (ProtectProc).
const TIME_SERVICES: &[&str] = &[
    "/run/systemd/units/invocation:systemd-timesyncd.service",
    "/run/systemd/units/invocation:chrony.service",
    "/run/systemd/units/invocation:chronyd.service",
    "/run/systemd/units/invocation:ntp.service",
    "/run/systemd/units/invocation:ntpd.service",
    "/run/systemd/units/invocation:ntpsec.service",
    "/run/systemd/units/invocation:openntpd.service",
    "/run/chrony/chronyd.pid",
    "/run/chronyd.pid",
    "/run/ntpd.pid",
];

fn time_service_running() -> bool {
    TIME_SERVICES.iter().any(|p| std::path::Path::new(p).symlink_metadata().is_ok())
}

/// Whether the clock is known unsynced: systemd-timesyncd's marker first, then the
/// kernel's own state.
fn kernel_unsynced() -> Option<bool> {
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some(false);
    }
    // SAFETY: timex is plain old data; all zeroes is a valid value (modes = 0: read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state into `tx`.
    // Where a seccomp filter denies it (ProtectClock=yes) it fails with EPERM: unknown.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0)
}

/// A plain sentence for how far the agent's clock is from another's (`theirs - ours`),
/// if it is more than a few seconds.
pub fn skew_words(ours_ms: i64, theirs_ms: i64) -> Option<String> {
    let d = theirs_ms.saturating_sub(ours_ms);
    let secs = d.unsigned_abs() / 1000;
    if secs < 5 {
        return None;
    }
    let (n, unit) = match secs {
        s if s >= 31_557_600 => (s as f64 / 31_557_600.0, "year"),
        s if s >= 86_400 => (s as f64 / 86_400.0, "day"),
        s if s >= 3_600 => (s as f64 / 3_600.0, "hour"),
        s if s >= 60 => (s as f64 / 60.0, "minute"),
        s => (s as f64, "second"),
    };
    let n = n.round() as u64;
    let plural = if n == 1 { "" } else { "s" };
    let side = if d > 0 { "behind" } else { "ahead of" };
    Some(format!("the agent's clock is {n} {unit}{plural} {side} the receiver's"))
}

/// Seconds since the epoch for signing, never before 1970.
pub fn unix_s(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sched: i64, boot: &str, boottime: i64, wall: i64, synced: bool) -> Saved {
        let boot_id = boot_id_of(&format!("{:0>32}", boot.trim_start_matches('b')));
        Saved { sched_ms: sched, boot_id, boottime_ms: boottime, wall_ms: wall, synced }
    }

    #[test]
    fn boot_ids_are_read_from_the_kernels_uuid() {
        assert_eq!(boot_id_of("00000000-0000-0000-0000-00000000002a\n"), 42);
        assert_ne!(boot_id_of("0d8a7a43-3b52-4f57-9b7e-3f0c6a2f9d11"), 0);
        assert_ne!(boot_id(), 0, "this machine has a boot id");
    }

    #[test]
    fn a_new_outbox_starts_at_the_wall_clock() {
        assert_eq!(rebase(None, &at(0, "b", 5, 1_000, false)), 1_000);
    }

    #[test]
    fn within_a_boot_boottime_counts_whatever_the_wall_clock_did() {
        // Saved in 2001 (wrong); restarted 10 s later with the clock stepped to 2026.
        let saved = at(978_307_200_000, "b1", 60_000, 978_307_200_000, false);
        let now = at(0, "b1", 70_000, 1_780_000_000_000, true);
        assert_eq!(rebase(Some(&saved), &now), 978_307_200_000 + 10_000);
        // Three years ahead, stepped back: still only the 10 s.
        let ahead = at(1_900_000_000_000, "b1", 60_000, 1_900_000_000_000, true);
        assert_eq!(rebase(Some(&ahead), &now), 1_900_000_000_000 + 10_000);
    }

    #[test]
    fn across_a_reboot_off_time_counts_only_between_synced_clocks() {
        let saved = at(5_000, "b1", 60_000, 1_000_000, true);
        assert_eq!(rebase(Some(&saved), &at(0, "b2", 1_000, 1_360_000, true)), 5_000 + 360_000);
        assert_eq!(rebase(Some(&saved), &at(0, "b2", 1_000, 1_360_000, false)), 5_000, "unsynced now");
        assert_eq!(rebase(Some(&saved), &at(0, "b2", 1_000, 10, true)), 5_000, "a clock gone back counts nothing");
    }

    #[test]
    fn quality_is_wrong_before_the_build_synced_or_not_after() {
        assert_eq!(classify(100, 1_000, Some(false), false), Quality::Wrong);
        assert_eq!(classify(100, 1_000, Some(true), true), Quality::Wrong);
        assert_eq!(classify(2_000, 1_000, Some(true), false), Quality::Unsynced);
        assert_eq!(classify(2_000, 1_000, Some(true), true), Quality::Syncing);
        assert_eq!(classify(2_000, 1_000, Some(false), true), Quality::Synced);
        assert_eq!(classify(2_000, 1_000, None, false), Quality::Synced);
    }

    #[test]
    fn skew_is_said_plainly() {
        let year = 365 * 86_400_000i64;
        assert_eq!(skew_words(0, 25 * year).unwrap(), "the agent's clock is 25 years behind the receiver's");
        assert!(skew_words(1_000, 0).is_none());
        assert_eq!(skew_words(60_000, 0).unwrap(), "the agent's clock is 1 minute ahead of the receiver's");
    }

    #[test]
    fn a_timestamp_taken_unsynced_is_made_true_once_the_clock_is_good() {
        let t = Taken { boot_id: 7, boottime_ms: 10_000 };
        // Taken in "2001", now synced in the same boot, 5 s later.
        assert_eq!(
            redate(978_307_200_000, t, Quality::Synced, 7, 15_000, 1_780_000_005_000),
            (1_780_000_000_000, false)
        );
        assert_eq!(
            redate(978_307_200_000, t, Quality::Unsynced, 7, 15_000, 1),
            (978_307_200_000, true),
            "not yet good"
        );
        assert_eq!(
            redate(978_307_200_000, t, Quality::Synced, 8, 15_000, 1),
            (978_307_200_000, true),
            "rebooted since"
        );
    }

    #[test]
    fn an_unsure_timestamp_is_labelled_as_the_clock_was_when_it_was_taken() {
        let built = 1_764_547_200;
        // Taken in 2001: before the build, so the clock was `wrong` then, whatever it is now.
        assert_eq!(taken_quality(978_307_200_000, built), Quality::Wrong);
        assert_eq!(taken_quality(-5, built), Quality::Wrong);
        // Taken after the build with the clock not synced: `unsynced`.
        assert_eq!(taken_quality(built * 1000 + 1, built), Quality::Unsynced);
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(boottime_ms() >= a + 4);
    }

    proptest::proptest! {
        /// Skews between any two times, from a header or a row, never overflow.
        #[test]
        fn skew_of_any_two_times_is_words_or_nothing(a in proptest::num::i64::ANY, b in proptest::num::i64::ANY) {
            let _ = skew_words(a, b);
        }
    }
}

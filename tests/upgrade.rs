//! An outbox written by an older build upgrades without loss. The fixture is made at test
//! time by the first migration alone (the first schema a build ever shipped), filled
//! with that schema's rows: queued deliveries part-way through their retries, audit rows
//! and quarantined messages. Today's agent migrates it while being killed at random
//! moments; then everything queued is delivered and the rest is kept.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rusqlite::params;

const QUEUED: usize = 8000;
const AUDITED: usize = 300;
const QUARANTINED: usize = 40;
const KILLS_DURING_MIGRATION: usize = 10;
const LONG: Duration = Duration::from_secs(120);

/// A first-schema outbox at `path`; returns the delivery ids it queued.
fn first_schema_outbox(path: &Path) -> Vec<String> {
    let mut conn = fleethook::outbox::create_at_version(path, 1).unwrap();
    let now = fleethook::event::now_ms();
    let tx = conn.transaction().unwrap();
    let mut ids = Vec::with_capacity(QUEUED);
    for n in 0..QUEUED {
        let data = format!(r#"{{"seq":{n},"status":"completed","fill":"{}"}}"#, "v".repeat(200));
        tx.execute(
            "INSERT INTO events (seq, id, type, device_id, created_ms, topic, data) VALUES (?1, ?2, 'mission.completed', 'agv-1', ?3, 'fleet/agv-1/mission', ?4)",
            params![n as i64 + 1, format!("event-{n:05}"), now - 60_000, data],
        )
        .unwrap();
        let id = format!("delivery-{n:05}");
        // Written before the schedule clock existed: times are on the wall clock, which a
        // new outbox's schedule clock starts from. Due now; one attempt already spent.
        tx.execute(
            "INSERT INTO deliveries (id, event_seq, subscription, priority, state, attempts, budget_used, next_attempt_ms, expires_ms, updated_ms, last_status, last_error)
             VALUES (?1, ?2, 'ops', ?3, 'pending', 1, 1, ?4, ?5, ?4, 503, 'HTTP 503')",
            params![id, n as i64 + 1, (n % 3) as i64, now - 1000, now + 72 * 3_600_000],
        )
        .unwrap();
        ids.push(id);
    }
    for n in 0..AUDITED {
        tx.execute(
            "INSERT INTO attempts (subscription, delivery_id, event_type, attempt, started_ms, duration_ms, status, error_kind, error, snippet, outcome)
             VALUES ('ops', ?1, 'mission.completed', 1, ?2, 40, 503, 'http', 'HTTP 503', 'written by the first schema', 'retry')",
            params![format!("delivery-{n:05}"), now - 30_000],
        )
        .unwrap();
    }
    for n in 0..QUARANTINED {
        tx.execute(
            "INSERT INTO quarantine (received_ms, topic, reason, size, payload) VALUES (?1, 'fleet/agv-1/mission', 'payload is not JSON', 9, ?2)",
            params![now - 20_000, format!("bad {n:04}").into_bytes()],
        )
        .unwrap();
    }
    tx.execute("INSERT INTO counters (subscription, outcome, n) VALUES ('ops', 'created', ?1)", [QUEUED as i64])
        .unwrap();
    tx.commit().unwrap();
    ids
}

/// How long after `start` the agent's log first said `what` (polled every millisecond).
fn when_logged(bed: &Bed, what: &str, start: Instant) -> Duration {
    while !bed.log().contains(what) {
        assert!(start.elapsed() < LONG, "the agent never said {what:?}:\n{}", bed.log());
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn schema_version(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

/// Puts the pristine first-schema copy back in place of the outbox.
fn restore(pristine: &Path, db: &Path) {
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", db.display()));
    }
    std::fs::copy(pristine, db).unwrap();
}

/// What must hold of the outbox after any kill: every queued delivery still pending,
/// the old audit rows and quarantine kept, and the file intact.
fn assert_nothing_lost(bed: &Bed, kills: usize) {
    let db = bed.db();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok", "after kill {kills}");
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"), QUEUED as i64, "after kill {kills}");
    let old_audit = "SELECT COUNT(*) FROM attempts WHERE snippet = 'written by the first schema'";
    assert_eq!(count(old_audit), AUDITED as i64, "after kill {kills}");
    assert_eq!(count("SELECT COUNT(*) FROM quarantine"), QUARANTINED as i64, "after kill {kills}");
}

#[test]
fn a_first_schema_outbox_migrates_under_kill9_and_delivers_everything() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let down = Down::new();
    let mut bed = Bed::new()
        .storage("audit_per_subscription = 100000")
        .subscription("ops", &down.url(), "retry = [\"1s\", \"1s\", \"1s\"]")
        .configure();
    let db = bed.dir.join("outbox.db");
    let pristine = bed.dir.join("first-schema.db");
    let ids = first_schema_outbox(&pristine);
    assert_eq!(schema_version(&pristine), 1);
    restore(&pristine, &db);

    // One whole migration, timed from the agent's log, sets the window kills aim at.
    let started = Instant::now();
    bed.spawn();
    let begun = when_logged(&bed, "Upgrading the outbox's schema", started);
    let done = when_logged(&bed, "Upgraded the outbox's schema", started);
    let latest = schema_version(&db);
    assert!(latest > 1, "the agent migrated the outbox");
    assert_nothing_lost(&bed, 0);
    bed.kill9();
    println!(
        "first-schema outbox ({QUEUED} queued): migration to version {latest} from {begun:?} to {done:?} after start"
    );

    // Kills at random moments from a little before the migration starts to a little
    // after it ends. A kill that leaves the outbox short of the latest version
    // interrupted the migration, and the next start resumes it; once the outbox has reached the latest version, the pristine copy is put back to be
    // migrated again.
    let window = (begun.as_micros() as u64 * 8 / 10)..=(done.as_micros() as u64 * 11 / 10);
    let (mut kills, mut interrupted) = (0, 0);
    while interrupted < KILLS_DURING_MIGRATION {
        assert!(kills < 10 * KILLS_DURING_MIGRATION, "only {interrupted} of {kills} kills landed in a migration");
        if schema_version(&db) == latest {
            restore(&pristine, &db);
        }
        bed.spawn();
        std::thread::sleep(Duration::from_micros(rng.u64(window.clone())));
        bed.kill9();
        kills += 1;
        let version = schema_version(&db);
        if version < latest {
            interrupted += 1;
            println!("kill {kills}: interrupted, the outbox is at version {version}");
        }
        assert_nothing_lost(&bed, kills);
    }

    // The last interrupted outbox, finished by an agent left alone, delivers everything.
    bed.spawn();
    bed.wait_subscribed();
    assert_eq!(schema_version(&db), latest);
    let ep = down.up(Reply::Status(200));
    assert!(
        wait_until(LONG, || bed.counter("ops", "delivered") == QUEUED as i64),
        "{} of {QUEUED} delivered; log:\n{}",
        bed.counter("ops", "delivered"),
        bed.log()
    );
    let got = ep.requests();
    let received: HashSet<String> =
        got.iter().map(|r| r.header("x-fleethook-delivery").unwrap_or_default().to_string()).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !received.contains(*id)).collect();
    assert!(missing.is_empty(), "{} never arrived: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    for r in got.iter().take(50) {
        verify(r, fleethook::sign::Scheme::Standard, "X-Fleethook");
        let body = r.json();
        let n = body["data"]["seq"].as_u64().unwrap();
        assert_eq!(body["id"], format!("event-{n:05}"), "the event keeps its id");
        assert_eq!(r.header("x-fleethook-delivery"), Some(format!("delivery-{n:05}").as_str()));
        assert_eq!(r.header("x-fleethook-attempt"), Some("2"), "the first schema's attempt counts");
    }
    assert_eq!(bed.counter("ops", "created"), QUEUED as i64, "the first schema's counters carry on");
    let old_audit = bed.count("SELECT COUNT(*) FROM attempts WHERE snippet = 'written by the first schema'");
    assert_eq!(old_audit, AUDITED as i64, "the audit rows are kept");
    let quarantine = bed.cli_json(&["quarantine"]);
    assert_eq!(quarantine.as_array().map(Vec::len), Some(QUARANTINED), "{quarantine}");
    println!(
        "upgrade: {kills} kills, {interrupted} during a migration; {} requests for {QUEUED} deliveries",
        got.len()
    );
}

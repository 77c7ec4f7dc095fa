//! Opening the database: pragmas, integrity check, and versioned migrations.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::OutboxError;
use crate::config::{StorageConfig, Synchronous};

/// The page size of a new outbox (docs/decisions.md: "Outbox page size: 2 KiB").
const PAGE_SIZE: i64 = 2048;

/// Migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    topic      TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    event_seq       INTEGER NOT NULL,
    subscription    TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    budget_used     INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    expires_ms      INTEGER NOT NULL,
    collapse_key    TEXT,
    updated_ms      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX deliveries_pending ON deliveries (subscription, next_attempt_ms, seq) WHERE state = 'pending';
CREATE INDEX deliveries_collapse ON deliveries (subscription, collapse_key) WHERE state = 'pending' AND collapse_key IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_seq);
CREATE TABLE attempts (
    seq          INTEGER PRIMARY KEY,
    subscription TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    started_ms   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status       INTEGER,
    error_kind   TEXT,
    error        TEXT,
    snippet      TEXT,
    outcome      TEXT NOT NULL
);
CREATE INDEX attempts_subscription ON attempts (subscription, seq);
CREATE TABLE quarantine (
    seq         INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
CREATE TABLE counters (
    subscription TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (subscription, outcome)
) WITHOUT ROWID;
CREATE TABLE dedupe (
    key     BLOB PRIMARY KEY,
    seen_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- Subscriptions that stay stopped across restarts: paused by an operator, or gone (410).
CREATE TABLE held (
    subscription TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    since_ms     INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- Dedupe keys live on the event row and in memory (see dedupe.rs): the keyed table put
-- every insert on a random page.
ALTER TABLE events ADD COLUMN dedupe_key INTEGER;
DROP TABLE dedupe;
"#,
    r#"
-- The expiry sweep finds what passed its max_age without reading every pending row
-- (with a million queued, that read took the writer about a second every sweep).
CREATE INDEX deliveries_expiry ON deliveries (subscription, expires_ms) WHERE state = 'pending';
"#,
    r#"
-- A FIFO lane reads its queue's head in event order; without this index every fetch
-- sorted the subscription's whole backlog.
CREATE INDEX deliveries_fifo ON deliveries (subscription, seq) WHERE state = 'pending';
"#,
    r#"
-- Events delivered from memory (the fast path) are never stored: their dedupe keys are,
-- appended in order (no index, no random page), so a redelivery after a restart is
-- recognised. `meta` says how far the fast log has been written to the tables.
CREATE TABLE delivered_keys (
    seq INTEGER PRIMARY KEY,
    key INTEGER NOT NULL
);
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- An event taken while the wall clock was not known good keeps where it was taken on the
-- boot's own clock, so that its timestamp can be made true once the clock is (see clock).
ALTER TABLE events ADD COLUMN clock_boot_id INTEGER;
ALTER TABLE events ADD COLUMN clock_boottime_ms INTEGER;
"#,
    r#"
-- The last retained payload taken per topic (route `retained = "once"`): the broker
-- resends it on every subscribe, and it must become one event, not one per start.
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    key   INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    r#"
-- A parallel lane drains high, then normal, then low priority (a field tech expects the
-- important events first when the link returns): the due index leads with priority. It
-- replaces the one without, so a queued delivery costs no more index writes than before.
CREATE INDEX deliveries_due ON deliveries (subscription, priority, next_attempt_ms, seq) WHERE state = 'pending';
DROP INDEX deliveries_pending;
"#,
    r#"
-- An event's deliveries are inserted together, so their seqs are one range: the event
-- row keeps it, and "which deliveries has this event" is a rowid range read. It replaces
-- the index on deliveries.event_seq, one B-tree less to write per queued delivery
-- (docs/decisions.md: "The durable path's indexes").
ALTER TABLE events ADD COLUMN first_delivery INTEGER;
ALTER TABLE events ADD COLUMN last_delivery INTEGER;
UPDATE events SET first_delivery = (SELECT MIN(seq) FROM deliveries WHERE event_seq = events.seq),
                  last_delivery = (SELECT MAX(seq) FROM deliveries WHERE event_seq = events.seq);
DROP INDEX deliveries_event;
-- Only FIFO subscriptions need their pending deliveries in event order: each gets a
-- partial index of its own when its lane first fetches (store::fifo_index).
DROP INDEX deliveries_fifo;
-- Expiry sweeps read bounded stretches of the table by seq (store::expire).
DROP INDEX deliveries_expiry;
"#,
    r#"
-- A batched subscription sends several deliveries in one request; each attempt's audit
-- row names the batch it went in.
ALTER TABLE attempts ADD COLUMN batch_id TEXT;
"#,
    r#"
-- A quarantined message's number is what a field tech types into `purge N`: it must
-- never be given to another message, or a stale `purge 3` deletes a newer one.
CREATE TABLE quarantine_numbered (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
INSERT INTO quarantine_numbered (seq, received_ms, topic, reason, size, payload)
    SELECT seq, received_ms, topic, reason, size, payload FROM quarantine;
DROP TABLE quarantine;
ALTER TABLE quarantine_numbered RENAME TO quarantine;
"#,
];

/// Opens (creating if needed) the outbox read-write, with its pragmas and migrations.
/// A file that fails the integrity check is moved aside, never deleted, and a fresh
/// outbox is created in its place.
pub fn open(cfg: &StorageConfig) -> Result<Connection, OutboxError> {
    let path = &cfg.path;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Io { path: dir.display().to_string(), source })?;
    }
    match open_checked(path, cfg) {
        Ok(conn) => Ok(conn),
        Err(Checked::Corrupt(reason)) if path.exists() => {
            let aside = move_aside(path)?;
            tracing::error!(path = %path.display(), moved_to = %aside.display(), %reason,
                "The outbox failed its integrity check; it was moved aside and a fresh one created. Events queued in it are not delivered.");
            open_checked(path, cfg).map_err(OutboxError::from)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug)]
enum Checked {
    Sqlite(rusqlite::Error),
    Corrupt(String),
    Newer {
        found: i64,
        known: i64,
    },
    /// Its schema version does not match its tables.
    Mismatch(String),
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checked::Sqlite(e) => write!(f, "{e}"),
            Checked::Corrupt(m) => write!(f, "{m}"),
            Checked::Newer { found, known } => write!(f, "schema version {found}, newer than this build's {known}"),
            Checked::Mismatch(m) => write!(f, "{m}"),
        }
    }
}

impl From<Checked> for OutboxError {
    fn from(c: Checked) -> Self {
        match c {
            Checked::Sqlite(e) => OutboxError::Sqlite(e),
            Checked::Corrupt(m) => OutboxError::Corrupt(m),
            Checked::Newer { found, known } => OutboxError::Newer { found, known },
            Checked::Mismatch(m) => OutboxError::Mismatch(m),
        }
    }
}

impl From<rusqlite::Error> for Checked {
    /// Only a file SQLite calls corrupt or not a database is moved aside; anything else
    /// (permissions, a full disk) is reported and the file left alone.
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, DatabaseCorrupt | NotADatabase) => {
                Checked::Corrupt(e.to_string())
            }
            _ => Checked::Sqlite(e),
        }
    }
}

/// Looks at an existing outbox through a read-only connection: one this build must
/// refuse (a newer schema) or move aside (corrupt) is refused before a single byte of
/// it is written. (The read-write open wrote 2–4 header bytes first.) What this look
/// cannot tell (no WAL index yet, say) the read-write open finds out as before.
/// Says whether it ran the integrity check (then the read-write open need not).
fn look_first(path: &Path) -> Result<bool, Checked> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(false);
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else { return Ok(false) };
    let version = match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
        Ok(v) => v,
        Err(e) => return corrupt_or_unknown(e),
    };
    if version > MIGRATIONS.len() as i64 {
        return Err(Checked::Newer { found: version, known: MIGRATIONS.len() as i64 });
    }
    match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
        Ok(check) if check != "ok" => Err(Checked::Corrupt(check)),
        Ok(_) => Ok(true),
        Err(e) => corrupt_or_unknown(e),
    }
}

/// A read-only look that failed: corrupt if SQLite says so, else left to the
/// read-write open.
fn corrupt_or_unknown(e: rusqlite::Error) -> Result<bool, Checked> {
    match Checked::from(e) {
        c @ Checked::Corrupt(_) => Err(c),
        _ => Ok(false),
    }
}

fn open_checked(path: &Path, cfg: &StorageConfig) -> Result<Connection, Checked> {
    let checked = look_first(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // page_size and auto_vacuum only take effect before the first table exists, and
    // page_size only before auto_vacuum (which writes the header); an outbox created with
    // another page size keeps it.
    //
    // Most of the flash wear at a robot's usual rate is whole pages rewritten per commit
    // (docs/decisions.md: "Outbox page size: 2 KiB").
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if !checked {
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(Checked::Corrupt(check));
        }
    }
    configure(&conn, cfg.synchronous)?;
    migrate(&conn)?;
    Ok(conn)
}

/// A fresh read-write connection to an outbox that is already open and migrated: the
/// writer swaps to one after repeated I/O failures, because a connection whose pager hit
/// an error can keep returning it after the cause (a full disk) is gone.
pub fn reopen(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    configure(&conn, synchronous)?;
    Ok(conn)
}

fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
    conn.pragma_update(None, "foreign_keys", "OFF")
}

fn migrate(conn: &Connection) -> Result<(), Checked> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // An outbox a newer build migrated has tables this one does not know how to keep
    // consistent: refuse it before writing anything (a downgrade must not damage it).
    if version > MIGRATIONS.len() as i64 {
        return Err(Checked::Newer { found: version, known: MIGRATIONS.len() as i64 });
    }
    if version < 0 {
        return Err(Checked::Mismatch(format!(
            "its schema version is {version}, which no fleethook writes: the file was edited by hand; move it aside (the agent then starts with an empty outbox)"
        )));
    }
    let target = MIGRATIONS.len() as i64;
    // A new outbox (version 0) is created, not upgraded: nothing to tell anyone.
    let upgrading = version > 0 && version < target;
    if upgrading {
        tracing::info!(
            from = version,
            to = target,
            "Upgrading the outbox's schema; each step commits on its own, so a stop here resumes where it was."
        );
    }
    if let Err(e) = run_migrations(conn, version, target) {
        // A migration that fails on an outbox whose tables are already of a later
        // version (user_version set back by hand) printed its SQL and "table events
        // already exists". Say what it means.
        return Err(match e {
            Checked::Sqlite(e) if version < target => {
                // SQLite's message ends with the statement; the first line says enough.
                let said = e.to_string();
                let said = said.lines().next().unwrap_or_default().trim_end().trim_end_matches(" in").to_string();
                Checked::Mismatch(format!(
                    "its schema version says {version}, but its tables are not that version's ({said}): the version was changed by hand; set it back (PRAGMA user_version = {target}) or move the file aside"
                ))
            }
            other => other,
        });
    }
    if upgrading {
        tracing::info!(from = version, to = target, "Upgraded the outbox's schema.");
    }
    Ok(())
}

/// Runs migrations `from + 1 ..= to`, one transaction each, so that a crash in the
/// middle of one leaves the outbox at the version before it.
fn run_migrations(conn: &Connection, from: i64, to: i64) -> Result<(), Checked> {
    for (i, sql) in MIGRATIONS.iter().enumerate().take(to.max(0) as usize).skip(from.max(0) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// An outbox as a build that knew only the first `version` migrations made it: the
/// upgrade tests (tests/upgrade.rs) fill it with that schema's rows and start today's
/// agent on it.
#[doc(hidden)]
pub fn create_at_version(path: &Path, version: i64) -> Result<Connection, OutboxError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    configure(&conn, Synchronous::Full)?;
    run_migrations(&conn, 0, version)?;
    Ok(conn)
}

fn move_aside(path: &Path) -> Result<PathBuf, OutboxError> {
    let stamp = crate::event::now_ms();
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &aside).map_err(|source| OutboxError::Io { path: path.display().to_string(), source })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_outbox_has_its_page_size_incremental_vacuum_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            StorageConfig { synchronous: Synchronous::Full, ..StorageConfig::for_tests(dir.path().join("outbox.db")) };
        let conn = open(&cfg).unwrap();
        let pragma = |name: &str| {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                    other => other.as_str().unwrap_or_default().to_string(),
                })
            })
            .unwrap()
        };
        assert_eq!(pragma("page_size"), PAGE_SIZE.to_string());
        assert_eq!(pragma("auto_vacuum"), "2", "incremental");
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "2", "full");
        assert_eq!(pragma("user_version"), MIGRATIONS.len().to_string());
    }

    #[test]
    fn an_outbox_from_a_newer_build_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StorageConfig::for_tests(dir.path().join("outbox.db"));
        drop(open(&cfg).unwrap());
        let newer = MIGRATIONS.len() as i64 + 3;
        let conn = Connection::open(&cfg.path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
        conn.execute_batch("CREATE TABLE from_the_future (x INTEGER)").unwrap();
        drop(conn);
        let Err(err) = open(&cfg) else { panic!("a newer schema must not open") };
        assert!(err.to_string().contains(&format!("schema version {newer}")), "{err}");
        assert!(cfg.path.exists(), "the file stays where it was, not moved aside");
        let conn = Connection::open(&cfg.path).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, newer);
    }

    #[test]
    fn quarantine_numbers_are_never_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&StorageConfig::for_tests(dir.path().join("outbox.db"))).unwrap();
        let add = || {
            conn.execute(
                "INSERT INTO quarantine (received_ms, topic, reason, size, payload) VALUES (0, 't', 'r', 0, x'')",
                [],
            )
            .unwrap();
            conn.last_insert_rowid()
        };
        let (_, newest) = (add(), add());
        conn.execute("DELETE FROM quarantine WHERE seq = ?1", [newest]).unwrap();
        assert!(add() > newest, "the purged number is not reused");
    }
}

//! The guarantees proven by breaking things: kill -9 at random moments, a broker restart, the
//! disk cap, a full filesystem, and corrupted database files.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);

/// Messages of about 1 KB: `{"seq":N,<extra>"fill":"…"}` for each seq.
fn padded(topic: &str, seqs: std::ops::Range<u64>, extra: &str) -> Vec<(String, Vec<u8>)> {
    let fill = "f".repeat(1000);
    seqs.map(|n| (topic.to_string(), format!(r#"{{"seq":{n},{extra}"fill":"{fill}"}}"#).into_bytes())).collect()
}

#[test]
fn kill9_while_streaming_loses_nothing() {
    let mut rng = ::fastrand::Rng::with_seed(seed());
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().full_sync().subscription("ops", &ep.url(), "").start();

    const N: u64 = 1500;
    let port = bed.broker.port;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let publisher = std::thread::spawn(move || {
        for chunk in 0..(N / 50) {
            let messages: Vec<_> =
                (chunk * 50..(chunk + 1) * 50).map(|n| mission("agv-1", n as usize, "completed")).collect();
            publish(port, &messages);
            std::thread::sleep(Duration::from_millis(60));
        }
        flag.store(true, Ordering::SeqCst);
    });
    let mut kills = 0;
    while kills < 6 || !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.u64(150..700)));
        bed.kill9();
        kills += 1;
        bed.spawn();
    }
    publisher.join().unwrap();
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "not everything arrived after {kills} kills");
    report("kill9_while_streaming", &ep, N, &format!("{kills} kills"));
    assert!(kills >= 6);
}

#[test]
fn kill9_while_draining_a_backlog_loses_nothing() {
    let mut rng = ::fastrand::Rng::with_seed(seed());
    let down = Down::new();
    let mut bed = Bed::new().subscription("ops", &down.url(), "").start();
    const N: u64 = 600;
    bed.publish(&(0..N as usize).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM deliveries") == N as i64));
    let ep = down.up(Reply::Status(200));
    let mut kills = 0;
    while kills < 15 {
        std::thread::sleep(Duration::from_millis(rng.u64(20..200)));
        bed.kill9();
        kills += 1;
        bed.spawn();
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    report("kill9_while_draining", &ep, N, &format!("{kills} kills"));
    // The outbox agrees: every delivery ended delivered, none lost or double counted.
    assert!(wait_until(LONG, || bed.count("SELECT n FROM counters WHERE outcome = 'delivered'") == N as i64));
    assert_eq!(bed.count("SELECT n FROM counters WHERE outcome = 'created'"), N as i64);
}

#[test]
fn a_broker_restart_mid_stream_loses_nothing() {
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().subscription("ops", &ep.url(), "").start();
    bed.publish(&(0..100).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    bed.broker.restart();
    bed.publish(&(100..200).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(wait_until(LONG, || all_arrived(&ep, 200)));
    report("broker_restart", &ep, 200, "0 kills");
}

#[test]
fn the_disk_cap_holds_and_high_priority_survives() {
    let down = Down::new();
    let bed = Bed::new()
        .storage("max_bytes = \"1MiB\"")
        .edit("event = \"alert.{/kind}\"", "event = \"alert.raised\"\npriority = \"high\"")
        .route("topic = \"fleet/+/telemetry\"\nevent = \"telemetry.sample\"\npriority = \"low\"")
        .subscription("ops", &down.url(), "")
        .start();

    let db = bed.dir.join("outbox.db");
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, db) = (peak.clone(), stop.clone(), db.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                let total = size(db.clone()) + size(format!("{}-wal", db.display()).into());
                peak.fetch_max(total, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let low = padded("fleet/agv-1/telemetry", 0..4000, "");
    for chunk in low.chunks(500) {
        bed.publish(chunk);
    }
    let high = padded("fleet/agv-1/alert", 10_000..10_200, "");
    bed.publish(&high);
    assert!(
        wait_until(LONG, || bed.count("SELECT COALESCE(SUM(n), 0) FROM counters WHERE outcome = 'created'") == 4200),
        "{}",
        bed.log()
    );
    // Evictions leave audit rows. Look now: under the cap the audit log keeps only its
    // newest rows, and the deliveries to come push these out.
    assert!(bed.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'evicted'") > 0, "evictions are audited");

    let ep = down.up(Reply::Status(200));
    let high_arrived = || {
        let seen = arrivals(&ep);
        (10_000..10_200).all(|s| seen.contains_key(&s))
    };
    assert!(wait_until(LONG, high_arrived), "every high-priority event is delivered");
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 0));
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();

    let counter = |o: &str| bed.count(&format!("SELECT COALESCE(SUM(n), 0) FROM counters WHERE outcome = '{o}'"));
    let (delivered, evicted, pending) = (
        counter("delivered"),
        counter("evicted"),
        bed.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"),
    );
    let peak = peak.load(Ordering::SeqCst);
    println!("disk cap: peak {peak} bytes of 1048576; delivered {delivered}, evicted {evicted}, pending {pending}");
    assert!(peak <= 1_048_576 * 105 / 100, "the files reached {peak} bytes, over the 1 MiB cap");
    assert!(evicted > 0, "a backlog of several times the cap was evicted from");
    let log = bed.log();
    let errors = log.lines().filter(|l| l.contains("ERROR") && l.contains("evicting")).count();
    assert_eq!(errors, 1, "one ERROR for the eviction episode, not one per batch:\n{log}");
    assert_eq!(delivered + evicted + pending, 4200, "delivered + evicted + pending = published");
    // Every request is a different delivery (the endpoint always answered 200), and each
    // was counted delivered, or evicted while its request was in flight: an eviction does
    // not wait for an answer, and the answer does not undo it.
    let requests = ep.requests();
    let received = requests.len() as i64;
    let ids: std::collections::HashSet<&str> =
        requests.iter().map(|r| r.header("x-fleethook-delivery").unwrap_or_default()).collect();
    assert_eq!(ids.len() as i64, received, "no delivery was sent twice");
    assert!(
        (delivered..=delivered + evicted).contains(&received),
        "endpoint got {received}; {delivered} counted delivered, {evicted} evicted"
    );
}

/// A 1 MiB outbox with `when_full = "backpressure"` and one subscription to `down`.
fn backpressure_bed(down: &Down) -> Bed {
    Bed::new()
        .storage("max_bytes = \"1MiB\"\nwhen_full = \"backpressure\"")
        .subscription("ops", &down.url(), "")
        .start()
}

#[test]
fn backpressure_leaves_messages_with_the_broker_instead_of_evicting() {
    let down = Down::new();
    let bed = backpressure_bed(&down);
    const N: u64 = 2000;
    let messages = padded("fleet/agv-1/mission", 0..N, r#""status":"completed","#);
    for chunk in messages.chunks(500) {
        bed.publish(chunk);
    }
    assert!(wait_until(LONG, || bed.log().contains("The outbox is full")), "{}", bed.log());
    let queued = bed.count("SELECT COALESCE(SUM(n), 0) FROM counters WHERE outcome = 'created'");
    assert!(queued < N as i64, "the rest waits at the broker ({queued} queued)");
    let ep = down.up(Reply::Status(200));
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "{} of {N} arrived; {}", arrivals(&ep).len(), bed.log());
    report("backpressure", &ep, N, "0 kills");
    assert_eq!(bed.count("SELECT COUNT(*) FROM counters WHERE outcome = 'evicted' AND n > 0"), 0, "nothing evicted");
}

/// Issue #14.1: at the cap with `backpressure` and the endpoint down, ingest used to
/// fill the database to its very last page, after which not even the delivery results
/// could commit: the writer retried forever, nothing was delivered when the endpoint came
/// back, and SIGTERM could not stop the bed. Ingest now stops short of the cap.
#[test]
fn backpressure_at_the_cap_still_delivers_when_the_endpoint_returns() {
    let down = Down::new();
    let mut bed = backpressure_bed(&down);
    const N: u64 = 8000;
    let fill = "x".repeat(200);
    let messages: Vec<(String, Vec<u8>)> = (0..N)
        .map(|n| {
            let body = format!(r#"{{"seq":{n},"status":"completed","fill":"{fill}"}}"#);
            ("fleet/agv-1/mission".to_string(), body.into_bytes())
        })
        .collect();
    // About 500 a second, as a bridge would publish them.
    for chunk in messages.chunks(50) {
        bed.publish(chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wait_until(LONG, || bed.log().contains("The outbox is full")), "{}", bed.log());
    let ep = down.up(Reply::Status(200));
    let deadline = Duration::from_secs(240);
    assert!(
        wait_until(deadline, || all_arrived(&ep, N)),
        "{} of {N} arrived; log tail:\n{}",
        arrivals(&ep).len(),
        log_tail(&bed)
    );
    report("backpressure at the cap", &ep, N, "0 kills");
    assert!(bed.terminate().success(), "SIGTERM ends the agent cleanly");
}

/// A small tmpfs, unmounted when dropped; tests that fill a filesystem need root.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(mounted, "this test mounts a small tmpfs to fill it; it needs root (CI runs as root)");
        Tmpfs(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// Writes a file until the filesystem has no room left.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(name)).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// An agent whose outbox lives in `dir` (its config and log stay outside it) and whose
/// endpoint is `down`.
fn outbox_in(dir: &std::path::Path, down: &Down) -> Bed {
    Bed::new()
        .edit("{dir}/outbox.db", &format!("{}/outbox.db", dir.display()))
        .subscription("ops", &down.url(), "")
        .start()
}

fn log_tail(agent: &Agent) -> String {
    let log = agent.log();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    tail.join("\n")
}

/// The outbox's filesystem is nearly full from the start. Once space returns, the
/// backlog is larger than the whole filesystem: the agent must stop short of filling it
/// itself (it could then commit nothing, not even the results that let it delete what it
/// delivered) and keep going by deleting what it delivered.
#[test]
fn a_full_filesystem_pauses_ingest_and_it_resumes_when_space_returns() {
    let disk = Tmpfs::mount("2m");
    let filler_path = disk.path().join("filler");
    std::fs::write(&filler_path, vec![0u8; 1536 * 1024]).unwrap();

    let down = Down::new();
    let mut bed = outbox_in(disk.path(), &down);
    const N: u64 = 2400;
    let messages = padded("fleet/agv-1/mission", 0..N, r#""status":"completed","#);
    let publisher = {
        let port = bed.broker.port;
        std::thread::spawn(move || {
            for chunk in messages.chunks(100) {
                publish(port, chunk);
            }
        })
    };
    let reported = |log: String| {
        log.contains("filesystem is full") || log.contains("filesystem is nearly full") || log.contains("cannot commit")
    };
    assert!(wait_until(LONG, || reported(bed.log())), "the agent reports the full disk:\n{}", bed.log());
    std::thread::sleep(Duration::from_secs(1));
    assert!(bed.is_running(), "a full filesystem never crashes the agent");

    std::fs::remove_file(&filler_path).unwrap();
    publisher.join().unwrap();
    let ep = down.up(Reply::Status(200));
    let ok = wait_until(LONG, || all_arrived(&ep, N));
    assert!(ok, "after space returned, {} of {N} arrived; log tail:\n{}", arrivals(&ep).len(), log_tail(&bed));
    report("enospc", &ep, N, "0 kills");
    if bed.log().contains("filesystem is full") {
        assert!(bed.log().contains("ingest resumes"), "a held ingest says when it resumes");
    }
}

/// The disk fills up while nothing arrives over MQTT: the only writes are the audit rows
/// of an offline endpoint's probes. They wait for room like ingest does, and once space
/// returns the writer recovers and the backlog drains.
#[test]
fn a_disk_that_fills_while_only_delivery_results_are_written_recovers() {
    let disk = Tmpfs::mount("4m");
    let down = Down::new();
    let mut bed = outbox_in(disk.path(), &down);
    const N: u64 = 200;
    bed.publish(&padded("fleet/agv-1/mission", 0..N / 2, r#""status":"completed","#));
    let created = || {
        let db = rusqlite::Connection::open_with_flags(
            disk.path().join("outbox.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT COALESCE(SUM(n), 0) FROM counters WHERE outcome = 'created'", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert!(wait_until(LONG, || created() == (N / 2) as i64), "the first half is queued");

    disk.fill("filler");
    assert!(
        wait_until(LONG, || bed.log().contains("filesystem is full") || bed.log().contains("cannot commit")),
        "probes of the offline endpoint cannot be recorded on a full disk:\n{}",
        log_tail(&bed)
    );
    let rest = padded("fleet/agv-1/mission", N / 2..N, r#""status":"completed","#);
    let publisher = {
        let port = bed.broker.port;
        std::thread::spawn(move || publish(port, &rest))
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(bed.is_running(), "a full filesystem never crashes the agent");
    // The field tech's first question still gets an answer.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["status", "--json", "--socket"])
        .arg(bed.dir.join("status.sock"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("status answers on a full disk ({e}): {}", String::from_utf8_lossy(&status.stderr)));
    assert_eq!(status["subscriptions"][0]["pending"], (N / 2) as i64, "{status}");

    std::fs::remove_file(disk.path().join("filler")).unwrap();
    publisher.join().unwrap();
    let ep = down.up(Reply::Status(200));
    let ok = wait_until(LONG, || all_arrived(&ep, N));
    assert!(ok, "after space returned, {} of {N} arrived; log tail:\n{}", arrivals(&ep).len(), log_tail(&bed));
    report("enospc-results", &ep, N, "0 kills");
}

fn corrupted_start(damage: impl FnOnce(&std::path::Path)) {
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().subscription("ops", &ep.url(), "").start();
    bed.publish(&(0..50).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    ep.wait_for(50, LONG);
    assert!(bed.terminate().success());
    damage(&bed.dir.join("outbox.db"));

    bed.spawn();
    bed.wait_subscribed();
    bed.publish(&[mission("agv-1", 99, "completed")]);
    assert!(wait_until(LONG, || arrivals(&ep).contains_key(&99)), "a fresh outbox works:\n{}", bed.log());
    let aside: Vec<_> = std::fs::read_dir(&bed.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert!(!aside.is_empty(), "the damaged file is moved aside, not deleted:\n{}", bed.log());
    assert!(bed.log().contains("ERROR"), "and that is logged at ERROR");
}

#[test]
fn a_garbage_database_file_is_moved_aside() {
    corrupted_start(|db| {
        let _ = std::fs::remove_file(format!("{}-wal", db.display()));
        std::fs::write(db, b"this is not an sqlite database, it is a shopping list: bolts, grease".repeat(100))
            .unwrap();
    });
}

#[test]
fn a_truncated_database_file_is_moved_aside() {
    corrupted_start(|db| {
        let _ = std::fs::remove_file(format!("{}-wal", db.display()));
        let len = std::fs::metadata(db).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        f.set_len(len / 3).unwrap();
    });
}

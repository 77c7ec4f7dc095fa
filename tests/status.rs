//! The field tech's tools: the status socket and the CLI, against a running agent with a
//! real broker and real endpoints (one healthy, one answering 404, one unreachable).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

struct Field {
    bed: Bed,
    ok: Endpoint,
    gone: Endpoint,
}

fn field() -> Field {
    let ok = Endpoint::start(Reply::Status(200));
    let gone = Endpoint::start(Reply::Status(404));
    let bed = Bed::new()
        .edit("[heartbeat]", "socket_mode = \"0666\"\n[heartbeat]")
        .subscription("ok", &ok.url(), "")
        .subscription("gone", &gone.url(), "")
        .subscription("down", &Down::new().url(), "")
        .start();
    Field { bed, ok, gone }
}

impl Field {
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_fleethook"))
            .args(args)
            .arg("--config")
            .arg(&self.bed.config)
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "a secret leaked: {stdout}{stderr}");
        (out.status.success(), stdout, stderr)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "fleethook {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn sub(&self, name: &str) -> Value {
        let status = self.json(&["status"]);
        status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
    }

    fn socket(&self) -> std::path::PathBuf {
        self.bed.dir.join("status.sock")
    }
}

/// Raw protocol: sends lines, returns one response per line.
fn raw(socket: &std::path::Path, lines: &[&[u8]]) -> Vec<Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    lines
        .iter()
        .map(|line| {
            s.write_all(line).unwrap();
            s.write_all(b"\n").unwrap();
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
        })
        .collect()
}

/// One status request on a fresh connection. A busy agent may answer and hang up before
/// the request is written, so a failed write still reads the answer.
fn status_once(socket: &std::path::Path) -> Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"{\"cmd\":\"status\"}\n");
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn a_field_tech_sees_what_is_stuck_and_fixes_it() {
    let f = field();
    let messages: Vec<_> = (0..5).map(|n| mission("agv-1", n, "completed")).collect();
    f.bed.publish(&messages);
    f.ok.wait_for(5, LONG);
    assert!(wait_until(LONG, || f.sub("gone")["failed"] == 5));
    assert!(wait_until(LONG, || f.sub("down")["state"] == "offline"));
    let status = f.json(&["status"]);
    assert_eq!(status["device_id"], "test-robot");
    assert_eq!(status["mqtt"]["connected"], true);
    assert!(status["storage"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(status["storage"]["events"], 5);
    let down = f.sub("down");
    assert_eq!((down["pending"].as_u64(), down["in_flight"].as_u64()), (Some(5), Some(0)));
    assert!(down["next_attempt_at"].is_string(), "{down}");
    assert_eq!(f.sub("ok")["delivered"], 5);
    assert_eq!(f.sub("ok")["state"], "online");
    assert!(!status.to_string().contains("whsec_"), "no secret in status");

    // What is stuck, and why.
    let queue = f.json(&["queue"]);
    assert_eq!(queue.as_array().unwrap().len(), 10, "5 failed for gone + 5 pending for down: {queue}");
    let waiting: Vec<&Value> = queue.as_array().unwrap().iter().filter(|d| d["subscription"] == "down").collect();
    assert!(waiting.iter().all(|d| d["waits"].as_str().is_some_and(|w| w.contains("cannot be reached"))), "{queue}");
    // Next attempts are wall-clock times, within the probe backoff of now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(waiting.iter().all(|d| (d["next_attempt_ms"].as_i64().unwrap() - now).abs() < 120_000), "{queue}");
    let log = f.json(&["log", "--subscription", "gone"]);
    assert_eq!(log.as_array().unwrap().len(), 5);
    assert!(log.as_array().unwrap().iter().all(|a| a["status"] == 404 && a["outcome"] == "failed"));
    let one = queue[0]["delivery_id"].as_str().unwrap().to_string();
    let shown = f.json(&["show", &one]);
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 3, "one delivery per subscription");

    // Pause, retry, emit, test.
    f.cli(&["pause", "down"]);
    assert_eq!(f.sub("down")["state"], "paused");
    let retried = f.json(&["retry", "--failed"]);
    assert_eq!(retried["retried"], 5);
    f.gone.wait_for(10, LONG);
    assert!(wait_until(LONG, || f.sub("gone")["failed"] == 5));
    assert_eq!(f.gone.count(), 10, "the 404 endpoint saw the 5 again");
    let emitted = f.json(&["emit", "mission.aborted", "--data", "{\"reason\":\"manual\"}"]);
    assert_eq!(emitted["delivery_ids"].as_array().unwrap().len(), 3);
    let got = f.ok.wait_for(6, LONG);
    assert_eq!(got[5].json()["type"], "mission.aborted");
    assert_eq!(got[5].json()["data"]["reason"], "manual");
    let test = f.json(&["test", "ok"]);
    assert_eq!((test["outcome"].as_str(), test["status"].as_u64()), (Some("delivered"), Some(200)));
    assert_eq!(f.ok.wait_for(7, LONG)[6].json()["type"], "fleethook.test");
    let (_, table, _) = f.cli(&["status"]);
    assert!(table.contains("SUBSCRIPTION") && table.contains("paused"), "{table}");
    let (_, frame, _) = f.cli(&["top", "--once"]);
    assert!(frame.contains("down") && frame.contains("storage"), "{frame}");

    // Resume drains what waited; pause survives a restart.
    f.cli(&["resume", "down"]);
    assert_ne!(f.sub("down")["state"], "paused");

    // Garbage gets an error, and the connection still works.
    let answers = raw(&f.socket(), &[b"this is not json", br#"{"cmd":"status"}"#, br#"{"cmd":"format_disk"}"#]);
    assert_eq!(answers[0]["ok"], false);
    assert_eq!(answers[0]["error"]["code"], "bad_request");
    assert_eq!(answers[1]["ok"], true);
    assert_eq!(answers[2]["error"]["code"], "unknown_command");
}

#[test]
fn the_socket_survives_abuse_and_keeps_delivering() {
    let f = field();
    // A huge line gets an error and the connection is closed.
    let mut s = UnixStream::connect(f.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may hang up before the whole line is written; that is its answer too.
    let _ = s.write_all(&vec![b'x'; 200 * 1024]);
    let mut answer = String::new();
    let _ = BufReader::new(&s).read_line(&mut answer);
    let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(answer["error"]["code"], "too_long");
    // A client that connects and says nothing does not block anyone.
    let _silent = UnixStream::connect(f.socket()).unwrap();
    // A hundred clients at once: each gets an answer (or `busy`).
    let socket = f.socket();
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || status_once(&socket))
        })
        .collect();
    for h in handles {
        let v = h.join().unwrap();
        assert!(v["ok"] == true || v["error"]["code"] == "busy", "{v}");
    }
    f.bed.publish(&[mission("agv-1", 1, "completed")]);
    f.ok.wait_for(1, LONG);
    assert_eq!(raw(&f.socket(), &[br#"{"cmd":"status"}"#])[0]["ok"], true);
}

#[test]
fn pause_survives_a_restart_and_strangers_may_only_look() {
    let mut f = field();
    f.cli(&["pause", "ok"]);
    assert!(f.bed.terminate().success());
    f.bed.spawn();
    f.bed.wait_subscribed();
    f.bed.publish(&[mission("agv-1", 1, "completed")]);
    assert!(wait_until(LONG, || f.sub("ok")["pending"] == 1));
    assert_eq!(f.sub("ok")["state"], "paused");
    assert_eq!(f.ok.count(), 0);
    let queue = f.json(&["queue", "--subscription", "ok"]);
    assert!(queue[0]["waits"].as_str().unwrap_or_default().contains("paused"), "queue says why: {queue}");
    let (_, table, _) = f.cli(&["queue"]);
    assert!(table.contains("WAITS FOR") && table.contains("the subscription is paused"), "{table}");

    // Another uid that is not in the agent's group: status yes, changes no.
    let as_nobody = |args: &[&str]| as_nobody(&f.socket(), args);
    let look = as_nobody(&["status", "--json"]);
    assert!(look.status.success(), "{}", String::from_utf8_lossy(&look.stderr));
    let change = as_nobody(&["resume", "ok"]);
    assert!(!change.status.success());
    assert!(
        String::from_utf8_lossy(&change.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&change.stderr)
    );
    assert_eq!(f.sub("ok")["state"], "paused");
    f.cli(&["resume", "ok"]);
    f.ok.wait_for(1, LONG);
}

#[test]
fn a_stranger_holding_every_connection_locks_nobody_out() {
    let f = field();
    // uid 65534 opens 64 connections and says nothing (perl: perl-base is Essential).
    let script = "use IO::Socket::UNIX; my @s; for (1..64) { my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), \
                  Peer => $ARGV[0]) or die \"connect: $!\"; push @s, $c; } $| = 1; print \"ready\\n\"; sleep 30;";
    let mut hog = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "perl", "-e", script])
        .arg(f.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(hog.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");

    // Root still gets its answer, with the CLI a field tech uses.
    let (ok, table, err) = f.cli(&["status"]);
    assert!(ok && table.contains("SUBSCRIPTION"), "root was locked out: {err}");
    // The stranger's own connections are capped; a fifth is refused...
    let own = as_nobody(&f.socket(), &["status", "--json"]);
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("busy"), "{}", String::from_utf8_lossy(&own.stderr));
    // ...until its silent ones are cut for not asking anything within 5 s.
    assert!(wait_until(LONG, || as_nobody(&f.socket(), &["status", "--json"]).status.success()));
    let _ = hog.kill();
    let _ = hog.wait();
}

#[test]
fn a_request_with_a_key_twice_is_refused() {
    let f = field();
    let answers = raw(&f.socket(), &[br#"{"cmd":"status","cmd":"pause","subscription":"ok"}"#, br#"{"cmd":"status"}"#]);
    assert_eq!(answers[0]["error"]["code"], "bad_request", "{}", answers[0]);
    assert!(answers[0]["error"]["message"].as_str().unwrap().contains("duplicate key `cmd`"), "{}", answers[0]);
    assert_eq!(answers[1]["ok"], true);
    assert_ne!(f.sub("ok")["state"], "paused");
}

/// Socket requests are hostile input too: random lines, and well-formed commands with
/// values of every size and kind, each get an answer, and the agent keeps delivering.
#[test]
fn random_requests_get_answers_and_never_stop_the_agent() {
    let mut rng = ::fastrand::Rng::with_seed(seed());
    let mut f = field();
    let cmds = [
        "status",
        "queue",
        "log",
        "show",
        "retry",
        "replay",
        "pause",
        "resume",
        "test",
        "emit",
        "metrics",
        "link",
        "quarantine",
        "quarantine_show",
        "quarantine_release",
        "quarantine_purge",
        "nope",
    ];
    let values = [
        "null",
        "0",
        "-1",
        "4294967296",
        "18446744073709551616",
        "-9223372036854775809",
        "1e999",
        "\"\"",
        "\"ops\"",
        "\"500000000000years\"",
        "\"9999-12-31T23:59:59Z\"",
        "[]",
        "{}",
        "[\"x\"]",
        "true",
        "\"\\u0000\"",
    ];
    let keys =
        ["subscription", "state", "limit", "id", "ids", "since", "until", "failed", "type", "data", "n", "profile"];
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for _ in 0..300 {
        let line = match rng.u8(0..4) {
            0 => (0..rng.usize(0..200)).map(|_| rng.u8(1..=255)).filter(|b| *b != b'\n').collect(),
            _ => {
                let mut obj = format!("{{\"cmd\":\"{}\"", cmds[rng.usize(0..cmds.len())]);
                for _ in 0..rng.usize(0..4) {
                    obj += &format!(",\"{}\":{}", keys[rng.usize(0..keys.len())], values[rng.usize(0..values.len())]);
                }
                (obj + "}").into_bytes()
            }
        };
        lines.push(line);
    }
    for chunk in lines.chunks(20) {
        let refs: Vec<&[u8]> = chunk.iter().map(|l| l.as_slice()).filter(|l| !l.trim_ascii().is_empty()).collect();
        for answer in raw(&f.socket(), &refs) {
            assert!(answer["ok"] == true || answer["error"]["code"].is_string(), "{answer}");
        }
    }
    assert!(f.bed.is_running(), "{}", f.bed.log());
    f.json(&["resume", "ok"]);
    f.bed.publish(&[mission("agv-1", 7, "completed")]);
    assert!(wait_until(LONG, || f.ok.requests().iter().any(|r| r.json()["data"]["seq"] == 7)));
}

/// The broker's own drops (mosquitto's `$SYS/broker/publish/messages/dropped`): events
/// lost before the agent saw them are at least said, in `status` and the log.
#[test]
fn the_brokers_drops_are_shown() {
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().broker("max_queued_messages 5\nsys_interval 1").subscription("ops", &ep.url(), "").start();
    bed.terminate();
    // The session waits at the broker, which keeps 5 of these and drops the rest.
    bed.missions(20);
    bed.spawn();
    bed.wait_subscribed();
    let mut status = Value::Null;
    assert!(
        wait_until(LONG, || {
            status = bed.cli_json(&["status"]);
            status["mqtt"]["broker_dropped"].as_u64() >= Some(15)
        }),
        "{status}"
    );
    let text = String::from_utf8(bed.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("broker dropped"), "{text}");
}

//! Far endpoints (DESIGN guarantees 1 and 6 over a real network): the endpoint sits behind
//! a TCP proxy that delays each direction, stalls, resets or never answers, as a WiFi or
//! LTE link does. Real mosquitto (with its default in-flight window of 20 where it
//! matters), real HTTP, the real binary.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);
/// Each direction: an endpoint that answers in 150 ms.
const HALF_150: Duration = Duration::from_millis(75);

fn assert_each_once_and_signed(ep: &Endpoint, n: u64) {
    let seen = arrivals(ep);
    assert!(
        (0..n).all(|i| seen.contains_key(&i)),
        "missing: {:?}",
        (0..n).filter(|i| !seen.contains_key(i)).collect::<Vec<_>>()
    );
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "sent more than once: {dups:?}");
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
}

/// What the agent's held journal files hold, as text (their records are JSON).
fn held_journal(bed: &Bed) -> String {
    ["outbox.db-held0", "outbox.db-held1"]
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(bed.agent.dir.join(f)).unwrap_or_default()).into_owned())
        .collect()
}

/// One HTTP/1.1 POST over a fresh connection through `port`; the answer's status line.
fn post(port: u16, timeout: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[test]
fn the_proxy_delays_stalls_resets_and_blackholes() {
    let ep = Endpoint::start(Reply::Status(200));
    let proxy = Proxy::delayed(ep.port, Duration::from_millis(100));
    let t = std::time::Instant::now();
    assert!(post(proxy.port, Duration::from_secs(5)).unwrap().contains("200"));
    assert!(t.elapsed() >= Duration::from_millis(200), "a round trip pays the delay twice: {:?}", t.elapsed());
    proxy.stall(Duration::from_millis(800));
    let t = std::time::Instant::now();
    assert!(post(proxy.port, Duration::from_secs(5)).unwrap().contains("200"));
    assert!(t.elapsed() >= Duration::from_millis(800), "a stall holds traffic: {:?}", t.elapsed());
    proxy.set(Link { bytes_per_s: Some(2_000), ..Link::default() });
    let t = std::time::Instant::now();
    assert!(post(proxy.port, Duration::from_secs(5)).unwrap().contains("200"));
    assert!(t.elapsed() >= Duration::from_millis(40), "about 90 bytes each way at 2 kB/s: {:?}", t.elapsed());
    proxy.set(Link { blackhole: true, ..Link::default() });
    let err = post(proxy.port, Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "a blackhole accepts and never answers: {err}"
    );
    assert_eq!(ep.count(), 3, "nothing reached the endpoint through the blackhole");
    // A reset ends a connection that is open (here, a blackholed one) with an RST.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    proxy.reset_all();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut s, &mut buf);
    assert!(
        matches!(read, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset) || matches!(read, Ok(0)),
        "reset: {read:?}"
    );
}

/// 150 ms away, 10 events/s: every event is delivered from memory and acked after its
/// answer; nothing of it is stored (the flash promise holds over a far link).
#[test]
fn an_endpoint_150_ms_away_is_fed_from_memory() {
    let ep = Endpoint::start(Reply::Status(200));
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let bed = Bed::new().broker("max_inflight_messages 20").subscription("ops", &proxy.url(), "").start();
    const N: u64 = 60;
    for chunk in (0..N as usize).collect::<Vec<_>>().chunks(5) {
        bed.publish(&chunk.iter().map(|&n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    assert_each_once_and_signed(&ep, N);
    assert_eq!(bed.count("SELECT COUNT(*) FROM events"), 0, "no event was stored");
    for r in ep.requests() {
        assert_eq!(r.header("x-fleethook-attempt"), Some("1"));
    }
}

/// 200 events/s 150 ms away through mosquitto's default window of 20: the agent stores
/// and acks what would stall the broker, so everything goes, once each.
#[test]
fn a_burst_to_a_far_endpoint_never_stalls_the_broker_window() {
    let ep = Endpoint::start(Reply::Status(200));
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let bed = Bed::new().broker("max_inflight_messages 20").subscription("ops", &proxy.url(), "").start();
    const N: u64 = 400;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    bed.publish(&messages);
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    assert_each_once_and_signed(&ep, N);
    assert!(
        held_journal(&bed).contains("mission_id"),
        "with 20 messages in flight at most and answers 150 ms away, some must be made durable before their answer (in the held journal) to keep the broker sending"
    );
    let log = bed.log();
    assert!(!log.contains("reconnect"), "no reconnect: {log}");
}

/// A roam: 10 events/s with a 3 s stall every 6 s. Nothing lost, nothing sent twice.
#[test]
fn a_roam_loses_nothing_and_sends_nothing_twice() {
    let ep = Endpoint::start(Reply::Status(200));
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let bed = Bed::new().broker("max_inflight_messages 20").subscription("ops", &proxy.url(), "").start();
    const N: u64 = 200;
    for chunk in 0..(N / 10) {
        if chunk % 6 == 3 {
            proxy.stall(Duration::from_secs(3));
        }
        let messages: Vec<_> =
            (chunk * 10..(chunk + 1) * 10).map(|n| mission("agv-1", n as usize, "completed")).collect();
        bed.publish(&messages);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    assert_each_once_and_signed(&ep, N);
}

/// An endpoint that answers in 1.5 s with `write_behind = "1s"`: every event is stored
/// before its ack, its attempt goes on meanwhile, and a kill -9 at random moments loses
/// nothing; with the route's `dedupe`, what is sent again carries the ids first sent.
#[test]
fn kill9_with_a_slow_far_endpoint_loses_nothing_and_keeps_ids() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let ep = Endpoint::start(Reply::Slow(Duration::from_millis(1200), 200));
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let mut bed = Bed::new()
        .broker("max_inflight_messages 20")
        .full_sync()
        .storage("write_behind = \"1s\"")
        .edit("topic = \"fleet/+/mission\"\n", "topic = \"fleet/+/mission\"\ndedupe = \"/mission_id\"\n")
        .subscription("ops", &proxy.url(), "")
        .start();
    const N: u64 = 150;
    let port = bed.broker.port;
    let publisher = std::thread::spawn(move || {
        for chunk in 0..(N / 10) {
            let messages: Vec<_> =
                (chunk * 10..(chunk + 1) * 10).map(|n| mission("agv-1", n as usize, "completed")).collect();
            publish(port, &messages);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(rng.u64(200..900)));
        bed.kill9();
        bed.spawn();
    }
    publisher.join().unwrap();
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "not everything arrived");
    let mut ids: std::collections::HashMap<u64, HashSet<String>> = std::collections::HashMap::new();
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
        let seq = r.json()["data"]["seq"].as_u64().unwrap();
        ids.entry(seq).or_default().insert(r.header("x-fleethook-delivery").unwrap().to_string());
    }
    let changed: Vec<_> = ids.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(changed.is_empty(), "an event sent again with another delivery id: {changed:?}");
    report("kill9 150 ms away, 1.2 s answers", &ep, N, "8 kills");
}

/// An endpoint that stops answering (a link that accepts and forwards nothing) after the
/// agent knows it: past `write_behind` the events are acked on the strength of the held
/// journal alone, with nothing in the tables, and a kill -9 then loses none of them. At
/// start the journal's entries are stored and sent with the ids they had, once each.
#[test]
fn events_acked_on_the_held_journal_alone_survive_kill9() {
    let ep = Endpoint::start(Reply::Status(200));
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let mut bed = Bed::new()
        .broker("max_inflight_messages 20")
        .full_sync()
        .storage("write_behind = \"300ms\"")
        .subscription("ops", &proxy.url(), "")
        .start();
    bed.publish(&[mission("agv-1", 0, "completed")]);
    assert!(wait_until(LONG, || all_arrived(&ep, 1)));
    // Its answer is on its way back for another 75 ms.
    std::thread::sleep(Duration::from_millis(500));
    let flowing = Link { delay: HALF_150, ..Link::default() };
    proxy.set(Link { blackhole: true, ..flowing.clone() });
    // The idle keep-alive connection goes too: the next requests open blackholed ones.
    proxy.reset_all();
    std::thread::sleep(Duration::from_millis(200));
    const N: u64 = 6;
    bed.publish(&(1..N as usize).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(
        wait_until(LONG, || (1..N).all(|n| held_journal(&bed).contains(&format!("m-{n}\\\"")))),
        "every held event reaches the held journal: {}",
        held_journal(&bed)
    );
    let stored = bed.texts("SELECT data FROM events");
    assert!(stored.is_empty(), "none is in the tables: {stored:?}\n{}", bed.log());
    let status = bed.agent.cli_json(&["status"]);
    let ops = &status["subscriptions"][0];
    assert_eq!(
        (ops["pending"].as_u64(), ops["delivered"].as_u64()),
        (Some(N - 1), Some(1)),
        "status counts them: {status}"
    );
    bed.agent.kill9();
    proxy.set(flowing);
    bed.agent.spawn();
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "lost: {:?}", arrivals(&ep));
    assert_each_once_and_signed(&ep, N);
    let log = bed.log();
    assert!(log.contains("held journal kept"), "stored from the journal at start: {log}");
    let ids: HashSet<String> =
        ep.requests().iter().filter_map(|r| r.header("x-fleethook-delivery").map(str::to_string)).collect();
    assert_eq!(ids.len(), N as usize, "one delivery id per event");
}

/// A cloud endpoint closes idle keep-alive connections, so each event of a slow robot
/// pays a new TCP and TLS handshake. The TLS session resumes: after the first, every new
/// connection is a resumed handshake (one round trip less on TLS 1.3 than a full one
/// with certificates), 150 ms away through the proxy.
#[test]
fn tls_sessions_resume_when_the_endpoint_closes_idle_connections() {
    let pki = common::pki::Pki::new();
    let ep = Endpoint::start_with_tls(
        Reply::WithHeaders(200, vec![("connection", "close".to_string())]),
        pki.acceptor(false),
    );
    let proxy = Proxy::delayed(ep.port, HALF_150);
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write(dir.path(), "robot", &["agv-1"]);
    let url = format!("https://localhost:{}/hook", proxy.port);
    let bed = Bed::new()
        .in_dir(dir.path())
        .subscription("ops", &url, &format!("ca_file = \"{}\"", files.ca.display()))
        .start();
    const N: usize = 4;
    let mut took = Vec::new();
    for n in 0..N {
        let sent = std::time::Instant::now();
        bed.publish(&[mission("agv-1", n, "completed")]);
        assert!(wait_until(LONG, || ep.count() > n), "event {n} did not arrive");
        took.push(ep.requests()[n].at.duration_since(sent));
        std::thread::sleep(Duration::from_millis(300));
    }
    let resumed: Vec<Option<bool>> = ep.requests().iter().map(|r| r.resumed).collect();
    println!("publish → endpoint over a new TLS connection each, 150 ms away: {took:?}; resumed {resumed:?}");
    assert_eq!(resumed[0], Some(false), "the first handshake is a full one");
    assert!(resumed[1..].iter().all(|r| *r == Some(true)), "later connections resume the session: {resumed:?}");
}

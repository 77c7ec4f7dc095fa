//! A fleet comes back together: an offline endpoint is knocked on (a TCP connect, no
//! request) until it answers, and a `Retry-After` on one delivery holds the whole
//! subscription. The window's growth and shrinking are unit-tested in
//! `src/delivery/window.rs`. Real mosquitto, the real binary, raw TCP listeners.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// A TCP listener that notes, per connection, the bytes it got, and answers an HTTP
/// request with 200.
struct Knocks {
    seen: Arc<Mutex<Vec<usize>>>,
}

impl Knocks {
    fn start_on(port: u16) -> Knocks {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let noted = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let noted = noted.clone();
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 16384];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                got.extend_from_slice(&buf[..n]);
                                let text = String::from_utf8_lossy(&got);
                                if let Some(end) = text.find("\r\n\r\n") {
                                    let length = text[..end]
                                        .lines()
                                        .find_map(|l| {
                                            l.to_ascii_lowercase()
                                                .strip_prefix("content-length:")
                                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                        })
                                        .unwrap_or(0);
                                    if got.len() >= end + 4 + length {
                                        let _ = stream.write_all(
                                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                        );
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    noted.lock().unwrap().push(got.len());
                });
            }
        });
        Knocks { seen }
    }

    fn connections(&self) -> Vec<usize> {
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn an_offline_endpoint_is_probed_with_a_bare_connect_before_any_request() {
    let down = Down::new();
    let bed = Bed::new().subscription("ops", &down.url(), "").start();
    bed.publish(&[mission("agv-1", 1, "completed")]);
    // Refused: each probe is an offline attempt that sent nothing.
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'offline'") >= 2));
    let error: String =
        bed.db().query_row("SELECT error FROM attempts ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(error.contains("connect probe"), "{error}");
    // Back: the probe connects and hangs up without a byte, then the request comes.
    let knocks = Knocks::start_on(down.port);
    assert!(wait_until(LONG, || knocks.connections().iter().any(|&n| n > 0)), "no request came");
    let connections = knocks.connections();
    assert_eq!(connections.first(), Some(&0), "the first connection is a bare knock: {connections:?}");
    assert!(bed.wait_deliveries("delivered", 1));
}

#[test]
fn retry_after_on_one_delivery_holds_every_delivery_of_the_subscription() {
    let busy = Reply::WithHeaders(503, vec![("retry-after", "3".to_string())]);
    let ep = Endpoint::scripted(vec![busy], Reply::Status(200));
    let bed = Bed::new().subscription("ops", &ep.url(), "max_in_flight = 1").start();
    bed.publish(&[mission("agv-1", 1, "completed")]);
    let first = ep.wait_for(1, LONG)[0].at;
    // Others come while the subscription is held: none may go inside the Retry-After.
    bed.publish(&(2..=5).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    let got = ep.wait_for(6, LONG);
    for r in &got[1..] {
        let after = r.at.duration_since(first);
        assert!(after >= Duration::from_secs(3), "a request {after:?} after the 503, inside its Retry-After: 3");
    }
    assert!(bed.wait_deliveries("delivered", 5));
}

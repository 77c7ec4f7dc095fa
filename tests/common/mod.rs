//! Real parts for the integration tests: a mosquitto per test on a free port with its own
//! persistence directory, HTTP endpoints on 127.0.0.1 that answer as scripted, and the
//! real `fleethook` binary.

#![allow(dead_code)]

pub mod pki;

mod agent;
mod bed;
mod broker;
mod endpoint;
mod network;

// Each test crate uses a part of this; what one does not use is not an error.
#[allow(unused_imports)]
pub use agent::*;
#[allow(unused_imports)]
pub use bed::*;
#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use endpoint::*;
#[allow(unused_imports)]
pub use network::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=";

/// A port nothing listens on now, and one this test process has not handed out before:
/// the kernel may offer a just-released port again, and two parallel tests holding the
/// same one (a broker and another test's endpoint) would talk to each other's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Polls `f` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Asserts that `req` carries a valid `scheme` signature with [`SECRET`] under header
/// prefix `prefix`, checked against the test's clock with the 5-minute tolerance.
pub fn verify(req: &Request, scheme: fleethook::sign::Scheme, prefix: &str) {
    use fleethook::sign;
    sign::verify(
        scheme,
        &[SECRET],
        prefix,
        &req.headers,
        &req.body,
        std::time::SystemTime::now(),
        sign::DEFAULT_TOLERANCE,
    )
    .unwrap_or_else(|e| panic!("{scheme:?} signature does not verify: {e}; headers {:?}", req.headers));
}

/// How many times each published seq (`{"seq":N,…}`) arrived.
pub fn arrivals(ep: &Endpoint) -> std::collections::HashMap<u64, usize> {
    let mut seen = std::collections::HashMap::new();
    for r in ep.requests() {
        *seen.entry(r.json()["data"]["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    seen
}

pub fn all_arrived(ep: &Endpoint, n: u64) -> bool {
    let seen = arrivals(ep);
    (0..n).all(|i| seen.contains_key(&i))
}

/// Prints what arrived of seqs `0..n` (with the `faults` the run caused) and asserts that
/// every one did.
pub fn report(name: &str, ep: &Endpoint, n: u64, faults: &str) {
    let seen = arrivals(ep);
    let missing: Vec<u64> = (0..n).filter(|i| !seen.contains_key(i)).collect();
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!("{name}: {n} published, {} delivered, {duplicates} duplicates, {faults}", seen.len());
    assert!(missing.is_empty(), "{name}: {} never arrived: {:?}", missing.len(), &missing[..missing.len().min(20)]);
}

/// A random seed for a fault test, printed; `FLEETHOOK_TEST_SEED` repeats a run.
pub fn seed() -> u64 {
    let s = std::env::var("FLEETHOOK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("seed {s} (set FLEETHOOK_TEST_SEED to repeat)");
    s
}

pub fn base_config(broker_port: u16) -> String {
    format!(
        r#"
device_id = "test-robot"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "fleethook-test-{broker_port}"
[storage]
path = "{{dir}}/outbox.db"
synchronous = "normal"
[status]
socket = "{{dir}}/status.sock"
[heartbeat]
interval = "0s"
[delivery]
offline_probe_max = "500ms"
shutdown_grace = "2s"

[[route]]
topic = "fleet/+/mission"
event = "mission.{{/status}}"
device_id = "{{topic.1}}"

[[route]]
topic = "fleet/+/alert"
event = "alert.{{/kind}}"
device_id = "{{topic.1}}"
"#
    )
}

/// A subscription signed with [`SECRET`]; a quick retry schedule unless `extra` sets one.
pub fn subscription(name: &str, url: &str, extra: &str) -> String {
    let retry = if extra.contains("retry =") { "" } else { "retry = [\"200ms\", \"200ms\", \"200ms\"]\n" };
    format!(
        "\n[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nallow_http = true\nsecret = \"{SECRET}\"\n{retry}{extra}\n"
    )
}

/// Runs the Python `script` over `requests` and returns the JSON it prints. Before it,
/// `SECRET` is set, `verify(secret, headers, body)` is the README's own stdlib snippet as
/// documented, and `requests` is a list of `{"headers": {…}, "body": bytes as sent}`.
pub fn python_over(requests: &[Request], script: &str) -> serde_json::Value {
    use base64::Engine;
    use std::io::Write;
    let input: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into())).collect();
            serde_json::json!({"headers": headers, "body": base64::engine::general_purpose::STANDARD.encode(&r.body)})
        })
        .collect();
    let prelude = format!(
        r#"
import base64, json, re, sys
SECRET = "{SECRET}"
ns = {{}}
exec(re.search(r"```python\n(.*?)```", open("{readme}").read(), re.S).group(1), ns)
verify = ns["verify"]
requests = [dict(r, body=base64.b64decode(r["body"])) for r in json.load(sys.stdin)]
"#,
        readme = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")
    );
    let mut py = Command::new("python3")
        .args(["-c", &(prelude + script)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

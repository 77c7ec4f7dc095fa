//! The `fleethook` command line: `check`, `secret`, `receive`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use common::SECRET;

fn fleethook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleethook")).args(args).output().unwrap()
}

const GOOD: &str = r#"device_id = "agv-007"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[route]]
topic = "fleet/+/mission"
event = "mission.{/status}"

[[subscription]]
name = "ops"
url = "https://user:pw@hooks.example.com/fleet"
secret = "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE="
headers = { Authorization = "Bearer sk_live_topsecret" }
"#;

fn check(config: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleethook.toml");
    std::fs::write(&path, config).unwrap();
    let out = fleethook(&["check", "--config", path.to_str().unwrap()]);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Asserts `check` refuses `config` with an error on `line` naming `key` and saying `says`.
fn refused(config: &str, line: usize, key: &str, says: &str) {
    let (ok, _, err) = check(config);
    assert!(!ok, "accepted:\n{config}");
    let expected = format!("fleethook.toml:{line}: {key}: ");
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
    assert!(err.contains(says), "expected `{says}` in:\n{err}");
}

#[test]
fn check_prints_the_resolved_config_without_secrets() {
    let (ok, out, err) = check(GOOD);
    assert!(ok, "{err}");
    assert!(out.contains("agv-007") && out.contains("retry"), "{out}");
    for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "topsecret", ":pw@"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} leaked:\n{out}");
    }
    assert!(out.contains("sha256:"), "secrets show as fingerprints:\n{out}");
}

/// What `check` prints loads back and prints the same again: sizes, rates and headers as
/// the config writes them, secrets under the keys they came from (a file's path, a
/// variable's name) or as a redacted placeholder, which `check` warns of and `run` refuses.
#[test]
fn check_prints_a_config_that_loads_back_and_prints_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("ops.secret");
    std::fs::write(&secret_file, "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=\n").unwrap();
    let password_file = dir.path().join("mqtt.password");
    std::fs::write(&password_file, "hunter2\n").unwrap();
    let config = format!(
        r#"device_id = "agv-007"
[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "agent"
password_file = "{password}"
max_payload = "1500B"
[storage]
path = "{dir}/outbox.db"
max_bytes = "3MiB"
[[route]]
topic = "fleet/+/mission"
event = "mission.{{/status}}"
ttl = "90m"
[[subscription]]
name = "ops"
url = "https://hooks.example.com/fleet"
secret = ["whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=", "whsec_dGhlIG5leHQgb25lIGZvciByb3RhdGlvbg=="]
secret_file = "{file}"
secret_env = "FLEETHOOK_TEST_ROUND_TRIP"
rate_limit = "100/m"
headers = {{ X-Team = "robotics", Authorization = "Bearer sk_live_topsecret" }}
[[subscription]]
name = "pager"
url = "https://events.pagerduty.com/v2/enqueue"
format = "pagerduty"
signature = "none"
routing_key = "R0UT1NGK3Y"
"#,
        password = password_file.display(),
        dir = dir.path().display(),
        file = secret_file.display()
    );
    let path = dir.path().join("fleethook.toml");
    std::fs::write(&path, config).unwrap();
    let check = |p: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleethook"))
            .args(["check", "--config"])
            .arg(p)
            .env("FLEETHOOK_TEST_ROUND_TRIP", "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let (printed, _) = check(&path);
    for leaked in ["topsecret", "R0UT1NGK3Y", "hunter2", "dGVzdHMtb25l", "dGhlIG5l"] {
        assert!(!printed.contains(leaked), "{leaked} leaked:\n{printed}");
    }
    for shown in [
        "max_payload = \"1500B\"",
        "max_bytes = \"3MiB\"",
        &format!("secret_file = \"{}\"", secret_file.display()),
        "secret_env = \"FLEETHOOK_TEST_ROUND_TRIP\"",
        &format!("password_file = \"{}\"", password_file.display()),
        "X-Team = \"robotics\"",
    ] {
        assert!(printed.contains(shown), "`{shown}` missing:\n{printed}");
    }
    let reprinted = dir.path().join("printed.toml");
    std::fs::write(&reprinted, &printed).unwrap();
    let (again, warned) = check(&reprinted);
    assert_eq!(again, printed, "printed twice, the same");
    // Two inline secrets, the Authorization header and the routing key are placeholders.
    assert_eq!(warned.matches("a redacted secret").count(), 4, "{warned}");
    assert!(warned.contains("subscription[0].secret") && warned.contains("subscription[1].routing_key"), "{warned}");
    let run = Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["run", "--config"])
        .arg(&reprinted)
        .env("FLEETHOOK_TEST_ROUND_TRIP", "whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the agent started with redacted secrets");
    assert!(said.contains("printed.toml:") && said.contains("a redacted secret"), "{said}");
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    refused(&GOOD.replace("[mqtt]\n", "[mqtt]\nhostname = \"x\"\n"), 4, "mqtt.hostname", "unknown field `hostname`");
}

#[test]
fn a_bad_duration_is_named_with_its_line() {
    refused(
        &(GOOD.to_string() + "retry = [\"5s\", \"10 fortnights\"]\n"),
        15,
        "subscription[0].retry[1]",
        "not a duration",
    );
}

#[test]
fn a_bad_size_is_named() {
    refused(
        &GOOD.replace("[mqtt]\n", "[storage]\nmax_bytes = \"big\"\n[mqtt]\n"),
        4,
        "storage.max_bytes",
        "not a size",
    );
}

#[test]
fn http_without_allow_http_is_refused() {
    refused(&GOOD.replace("https://user:pw@", "http://"), 12, "subscription[0].url", "allow_http");
}

#[test]
fn a_missing_secret_is_refused() {
    refused(
        &GOOD.replace("secret = \"whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=\"\n", ""),
        10,
        "subscription[0].secret",
        "secret is required",
    );
}

#[test]
fn a_template_that_references_nothing_is_refused() {
    refused(&GOOD.replace("mission.{/status}", "mission.{topic.5}"), 8, "route[0].event", "references nothing");
}

#[test]
fn a_bad_url_is_refused() {
    refused(&GOOD.replace("mqtt://127.0.0.1:1883", "127.0.0.1:1883"), 4, "mqtt.url", "mqtt://");
}

#[test]
fn a_missing_file_is_an_error() {
    let out = fleethook(&["check", "--config", "/nonexistent/fleethook.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fleethook.toml"));
}

#[test]
fn secret_prints_a_standard_webhooks_secret() {
    let out = fleethook(&["secret"]);
    let s = String::from_utf8(out.stdout).unwrap();
    let s = s.trim();
    assert!(s.starts_with("whsec_"), "{s}");
    fleethook::sign::signing_key(fleethook::sign::Scheme::Standard, s).unwrap();
    assert_ne!(s, String::from_utf8(fleethook(&["secret"]).stdout).unwrap().trim());
}

#[test]
fn receive_verifies_and_rejects() {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["receive", "--port", &port.to_string(), "--secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let statuses = rt.block_on(async {
        fleethook::init_crypto();
        let client = reqwest::Client::new();
        let body = br#"{"type":"mission.completed"}"#;
        let ts = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let key = fleethook::sign::signing_key(fleethook::sign::Scheme::Stripe, SECRET).unwrap();
        let mut out = Vec::new();
        for tamper in [false, true] {
            let mut req = client.post(format!("http://127.0.0.1:{port}/")).body(if tamper {
                b"{}".to_vec()
            } else {
                body.to_vec()
            });
            for (k, v) in fleethook::sign::sign_headers(
                fleethook::sign::Scheme::Stripe,
                std::slice::from_ref(&key),
                "X-Fleethook",
                "d-1",
                ts,
                body,
            ) {
                req = req.header(k, v);
            }
            req = req.header("X-Fleethook-Event", "mission.completed").header("X-Fleethook-Delivery", "d-1");
            out.push(req.send().await.unwrap().status().as_u16());
        }
        out
    });
    assert_eq!(statuses, [204, 401]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(first.contains("verified") && first.contains("stripe") && first.contains("mission.completed"), "{first}");
    assert!(second.contains("REJECTED"), "{second}");
}

#[test]
fn the_example_config_passes_check() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fleethook.toml");
    let out = fleethook(&["check", "--config", path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") && !shown.contains("R0UT1NGKEY"), "{shown}");
}

/// The shipped config's signing secret is public: `check` warns, `run` refuses it on an
/// enabled subscription, naming the file, line and key.
#[test]
fn run_refuses_the_example_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleethook.toml");
    let config = GOOD.replace("whsec_dGVzdHMtb25seS1zaWduaW5nLWtleS0wMDE=", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    std::fs::write(&path, config).unwrap();
    let check = fleethook(&["check", "--config", path.to_str().unwrap()]);
    let warned = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success() && warned.contains("example secret"), "{warned}");
    let run = Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{said}");
    assert!(
        said.contains(&format!("{}:13: subscription[0].secret: the documentation's example secret", path.display())),
        "{said}"
    );
}

/// A reader that goes away (`fleethook check | head -1`) ends the command quietly: no
/// panic, no SIGABRT, no backtrace.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleethook.toml");
    std::fs::write(&path, GOOD).unwrap();
    for args in [vec!["check", "--config", path.to_str().unwrap()], vec!["secret"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleethook"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_ne!(out.status.signal(), Some(libc::SIGABRT), "{args:?} aborted: {stderr}");
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{args:?}: {:?}", out.status);
    }
}

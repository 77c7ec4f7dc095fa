//! The delivery rules table, one test per row, against real HTTP servers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// A broker and an agent with the given subscriptions, subscribed and ready.
fn rig(subscriptions: &str) -> Bed {
    Bed::new().toml(subscriptions).start()
}

/// Each attempt's error kind and text, oldest first.
fn errors(bed: &Bed, sub: &str) -> Vec<(String, String)> {
    bed.db()
        .prepare(
            "SELECT COALESCE(error_kind, ''), COALESCE(error, '') FROM attempts WHERE subscription = ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([sub], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn seq_of(r: &Request) -> u64 {
    r.json()["data"]["seq"].as_u64().unwrap()
}

#[test]
fn retry_after_is_honoured() {
    let ep = Endpoint::scripted(vec![Reply::WithHeaders(429, vec![("retry-after", "2".into())])], Reply::Status(200));
    let rig = rig(&subscription("ops", &ep.url(), ""));
    rig.missions(1);
    let got = ep.wait_for(2, LONG);
    assert_eq!(got.len(), 2);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}, before Retry-After: 2");
    assert_eq!(got[1].header("X-Fleethook-Attempt"), Some("2"));
    assert!(wait_until(LONG, || rig.counter("ops", "delivered") == 1));
}

#[test]
fn a_timeout_after_connect_is_retried() {
    let ep = Endpoint::scripted(vec![Reply::Hang], Reply::Status(200));
    let rig = rig(&subscription("ops", &ep.url(), "timeout = \"300ms\""));
    rig.missions(1);
    ep.wait_for(2, LONG);
    assert!(wait_until(LONG, || rig.counter("ops", "delivered") == 1));
    assert_eq!(errors(&rig, "ops")[0].0, "timeout");
}

#[test]
fn a_closed_connection_is_retried() {
    let ep = Endpoint::scripted(vec![Reply::Close], Reply::Status(200));
    let rig = rig(&subscription("ops", &ep.url(), ""));
    rig.missions(1);
    let got = ep.wait_for(2, LONG);
    assert_eq!(seq_of(&got[0]), seq_of(&got[1]));
    assert!(wait_until(LONG, || rig.counter("ops", "delivered") == 1));
}

#[test]
fn redirects_are_not_followed_and_fail_naming_the_location() {
    let elsewhere = Endpoint::start(Reply::Status(200));
    let ep = Endpoint::start(Reply::WithHeaders(301, vec![("location", elsewhere.url())]));
    let rig = rig(&subscription("ops", &ep.url(), ""));
    rig.missions(1);
    ep.wait_for(1, LONG);
    assert!(wait_until(LONG, || rig.counter("ops", "failed") == 1));
    let (_, error) = errors(&rig, "ops").remove(0);
    assert!(error.contains(&elsewhere.url()), "{error}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((ep.count(), elsewhere.count()), (1, 0));
}

#[test]
fn gone_fails_and_pauses_the_subscription() {
    let ep = Endpoint::start(Reply::Status(410));
    let rig = rig(&subscription("ops", &ep.url(), "ordering = \"fifo\""));
    rig.missions(3);
    ep.wait_for(1, LONG);
    assert!(wait_until(LONG, || rig.counter("ops", "failed") == 1));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ep.count(), 1, "nothing more is sent to a gone endpoint");
    assert_eq!(rig.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"), 2);
}

#[test]
fn other_client_errors_fail_at_once() {
    let ep = Endpoint::start(Reply::Status(422));
    let rig = rig(&subscription("ops", &ep.url(), ""));
    rig.missions(3);
    ep.wait_for(3, LONG);
    assert!(wait_until(LONG, || rig.counter("ops", "failed") == 3));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.count(), 3);
}

#[test]
fn an_endpoint_unreachable_past_its_whole_schedule_still_gets_everything() {
    let down = Down::new();
    let rig = rig(&subscription("ops", &down.url(), "retry = [\"300ms\", \"300ms\", \"300ms\", \"300ms\"]"));
    rig.missions(20);
    assert!(wait_until(LONG, || rig.count("SELECT COUNT(*) FROM deliveries") == 20));
    std::thread::sleep(Duration::from_secs(8));
    let offline = rig.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'offline'");
    assert!(offline >= 3, "it kept probing while closed ({offline} probes)");
    assert_eq!(rig.count("SELECT MAX(budget_used) FROM deliveries"), 0, "probes spend no budget");
    let ep = down.up(Reply::Status(200));
    let got = ep.wait_for(20, LONG);
    let seqs: HashSet<_> = got.iter().map(seq_of).collect();
    assert_eq!(seqs.len(), 20, "all 20 arrive once the endpoint opens");
    assert!(wait_until(LONG, || rig.counter("ops", "delivered") == 20));
    assert_eq!(rig.counter("ops", "failed"), 0);
}

#[test]
fn fifo_delivers_in_event_order_under_retries() {
    let ep = Endpoint::scripted(vec![Reply::Status(500), Reply::Status(503)], Reply::Status(200));
    let rig = rig(&subscription("ops", &ep.url(), "ordering = \"fifo\""));
    rig.missions(6);
    let got = ep.wait_for(8, LONG);
    let order: Vec<u64> = got.iter().map(seq_of).collect();
    assert_eq!(order, [0, 0, 0, 1, 2, 3, 4, 5], "head-of-line: nothing overtakes a retrying event");
}

#[test]
fn the_rate_limit_is_respected() {
    let ep = Endpoint::start(Reply::Status(200));
    let rig = rig(&subscription("ops", &ep.url(), "rate_limit = \"5/s\""));
    rig.missions(15);
    let got = ep.wait_for(15, LONG);
    assert_eq!(got.len(), 15);
    // A bucket of 5 refilled at 5/s: never more than 5 + 5 starts in any second.
    for first in &got {
        let in_window =
            got.iter().filter(|r| r.at >= first.at && r.at.duration_since(first.at) < Duration::from_secs(1)).count();
        assert!(in_window <= 10, "{in_window} requests within one second");
    }
}

#[test]
fn an_event_past_its_max_age_expires() {
    let rig = rig(&subscription("ops", &Down::new().url(), "max_age = \"1s\""));
    rig.missions(3);
    assert!(wait_until(LONG, || rig.counter("ops", "expired") == 3), "expired: {}", rig.counter("ops", "expired"));
    assert_eq!(rig.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'expired'"), 3);
    rig.missions(3);
    assert!(wait_until(LONG, || rig.counter("ops", "expired") == 6));
    let log = rig.log();
    let errors = log.lines().filter(|l| l.contains("ERROR") && l.contains("expired")).count();
    assert_eq!(errors, 1, "expiry is data loss, logged at ERROR once for the episode:\n{log}");
}

/// A certificate that does not verify is a configuration fault, not a struggling endpoint:
/// state `tls`, probed like offline without spending retry budget, one ERROR per episode.
#[test]
fn a_certificate_that_does_not_verify_is_state_tls_probed_without_budget_and_said_once() {
    let (ep, ca_pem) = Endpoint::start_tls(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let subs = subscription("untrusted", &ep.https_url(), "")
        + &subscription("trusted", &ep.https_url(), &format!("ca_file = \"{}\"", ca.display()));
    let rig = rig(&subs);
    rig.missions(1);
    assert!(wait_until(LONG, || rig.counter("trusted", "delivered") == 1));
    // Probes at about 1 s, 2 s, 4 s: three attempts within LONG.
    assert!(wait_until(LONG, || errors(&rig, "untrusted").len() >= 3), "probed again: {:?}", errors(&rig, "untrusted"));
    let (kind, error) = errors(&rig, "untrusted").remove(0);
    assert_eq!(kind, "tls", "{error}");
    assert_eq!(ep.count(), 1, "only the trusted subscription got through");
    let status = rig.cli_json(&["status"]);
    let untrusted = status["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == "untrusted").unwrap();
    assert_eq!(untrusted["state"], "tls", "{untrusted}");
    let spent = rig.count("SELECT COALESCE(SUM(budget_used), 0) FROM deliveries WHERE subscription = 'untrusted'");
    assert_eq!(spent, 0, "probes spend no retry budget");
    let log = rig.log();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 1, "one ERROR for the episode, not one per attempt:\n{log}");
    assert!(log.contains("certificate does not verify"), "{log}");
}

/// A self-signed leaf is pinned by naming it as `ca_file`; a certificate for another name
/// is explained in the README's words.
#[test]
fn a_self_signed_leaf_is_pinned_through_ca_file_and_a_wrong_name_is_explained() {
    let (acceptor, leaf_pem) = common::pki::self_signed_acceptor();
    let ep = Endpoint::start_with_tls(Reply::Status(200), acceptor);
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let pinned = format!("ca_file = \"{}\"", leaf.display());
    // The certificate is for localhost; 127.0.0.1 is another name.
    let by_address = ep.https_url().replace("localhost", "127.0.0.1");
    let subs = subscription("pinned", &ep.https_url(), &pinned) + &subscription("by_address", &by_address, &pinned);
    let rig = rig(&subs);
    rig.missions(1);
    assert!(wait_until(LONG, || rig.counter("pinned", "delivered") == 1), "{:?}", errors(&rig, "pinned"));
    assert!(wait_until(LONG, || !errors(&rig, "by_address").is_empty()));
    let (kind, error) = errors(&rig, "by_address").remove(0);
    assert_eq!(kind, "tls", "{error}");
    assert!(error.starts_with("TLS: the endpoint's certificate is not valid for the URL's host name"), "{error}");
    assert_eq!(ep.count(), 1);
}

#[test]
fn service_formats_and_rotated_secrets() {
    let slack = Endpoint::start(Reply::Status(200));
    let pd = Endpoint::start(Reply::Status(202));
    let dd = Endpoint::start(Reply::Status(202));
    let rotated = Endpoint::start(Reply::Status(200));
    let new_secret = fleethook::sign::new_secret();
    let subs = format!(
        r#"
[[subscription]]
name = "slack"
url = "{}"
allow_http = true
format = "slack"
summary = "{{type}} on {{device_id}}: {{/mission_id}}"
[[subscription]]
name = "pd"
url = "{}"
allow_http = true
format = "pagerduty"
routing_key = "R0UTE"
[[subscription]]
name = "dd"
url = "{}"
allow_http = true
format = "datadog"
api_key = "DDKEY"
[[subscription]]
name = "rotated"
url = "{}"
allow_http = true
secret = ["{SECRET}", "{new_secret}"]
headers = {{ X-Team = "robots" }}
"#,
        slack.url(),
        pd.url(),
        dd.url(),
        rotated.url()
    );
    let rig = rig(&subs);
    rig.missions(1);
    let s = slack.wait_for(1, LONG)[0].json();
    assert_eq!(s, serde_json::json!({"text": "mission.completed on agv-1: m-0"}));
    let p = pd.wait_for(1, LONG)[0].json();
    assert_eq!((p["routing_key"].as_str(), p["event_action"].as_str()), (Some("R0UTE"), Some("trigger")));
    assert_eq!(p["payload"]["source"], "agv-1");
    assert_eq!(p["payload"]["custom_details"]["mission_id"], "m-0");
    let d = dd.wait_for(1, LONG);
    assert_eq!(d[0].header("DD-API-KEY"), Some("DDKEY"));
    assert_eq!(d[0].json()["title"], "mission.completed on agv-1");
    let r = &rotated.wait_for(1, LONG)[0];
    for secret in [SECRET, new_secret.as_str()] {
        fleethook::sign::verify(
            fleethook::sign::Scheme::Standard,
            &[secret],
            "X-Fleethook",
            &r.headers,
            &r.body,
            std::time::SystemTime::now(),
            fleethook::sign::DEFAULT_TOLERANCE,
        )
        .unwrap();
    }
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    assert_eq!(r.header("X-Team"), Some("robots"));
}

/// An endpoint whose certificate the agent cannot trust: the audit log says what is
/// wrong and what to do, in words, not only rustls's `UnknownIssuer`.
#[test]
fn an_untrusted_certificate_is_explained() {
    let (tls, _ca) = Endpoint::start_tls(Reply::Status(200));
    let rig = rig(&subscription("ops", &tls.https_url(), ""));
    rig.missions(1);
    let mut error = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let log = rig.cli_json(&["log"]);
            error = log[0]["error"].as_str().unwrap_or_default().to_string();
            !error.is_empty()
        }),
        "no attempt was logged"
    );
    assert!(error.starts_with("TLS: the endpoint's certificate is not signed by a CA this agent trusts"), "{error}");
    assert!(error.contains("ca_file") && error.contains("UnknownIssuer"), "{error}");
    assert_eq!(tls.count(), 0);
}

/// `auth = { bearer_file = … }`: the token goes as `Authorization: Bearer …` on every
/// request, and `check` prints the file, never the token.
#[test]
fn a_bearer_token_from_a_file_is_sent_and_never_printed() {
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ops.token");
    std::fs::write(&token, "tok-8e1f2a\n").unwrap();
    let auth = format!("auth = {{ bearer_file = \"{}\" }}", token.display());
    let rig = rig(&subscription("ops", &ep.url(), &auth));
    rig.missions(2);
    for r in ep.wait_for(2, LONG) {
        assert_eq!(r.header("authorization"), Some("Bearer tok-8e1f2a"));
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
    let printed = rig.cli(&["check"]);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(!text.contains("tok-8e1f2a") && !rig.log().contains("tok-8e1f2a"), "the token leaked:\n{text}");
    assert!(text.contains(&format!("bearer_file = \"{}\"", token.display())), "{text}");
}

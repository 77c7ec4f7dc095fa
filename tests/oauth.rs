//! OAuth2 client credentials (issue #19): a local token endpoint and a receiver that
//! takes only the token it issued last. The token is fetched once and cached, fetched
//! again after a 401, and the token endpoint's outage keeps the delivery's retry budget.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const LONG: Duration = Duration::from_secs(20);

#[derive(Default)]
struct State {
    /// Tokens issued so far; the receiver takes only the last.
    issued: u32,
    /// The receiver has revoked the last token: it answers 401 to it.
    revoked: bool,
    token_down: bool,
    /// `Authorization` and body of each token request.
    token_requests: Vec<(String, String)>,
    /// `Authorization`, answer, and the event's mission id of each webhook request.
    hooks: Vec<(String, u16, String)>,
}

/// One server for both: `/token` issues `tok-N`, `/hook` checks it.
struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, st.clone()));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Server { port, state, _rt: rt }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    st: Arc<Mutex<State>>,
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = String::from_utf8_lossy(&body.collect().await.map(|b| b.to_bytes()).unwrap_or_default()).into_owned();
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut s = st.lock().unwrap();
    let (status, reply) = if parts.uri.path() == "/token" {
        s.token_requests.push((auth, body));
        if s.token_down {
            (503, r#"{"error":"temporarily_unavailable"}"#.to_string())
        } else {
            s.issued += 1;
            s.revoked = false;
            (200, format!(r#"{{"access_token":"tok-{}","token_type":"Bearer","expires_in":3600}}"#, s.issued))
        }
    } else {
        let good = !s.revoked && s.issued > 0 && auth == format!("Bearer tok-{}", s.issued);
        let status = if good { 200 } else { 401 };
        let id = serde_json::from_str::<serde_json::Value>(&body).ok().map(|e| e["data"]["mission_id"].to_string());
        s.hooks.push((auth, status, id.unwrap_or_default()));
        (status, String::new())
    };
    let resp = hyper::Response::builder().status(status).header("content-type", "application/json");
    Ok(resp.body(Full::new(Bytes::from(reply))).unwrap())
}

#[test]
fn oauth2_tokens_are_cached_refreshed_after_a_401_and_a_token_outage_spends_no_retries() {
    let server = Server::start();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    std::fs::write(&secret_file, "s3cr3t-value\n").unwrap();
    let auth = format!(
        "auth = {{ token_url = \"http://127.0.0.1:{}/token\", client_id = \"robot-7\", client_secret_file = \"{}\", scope = \"events:write\" }}",
        server.port,
        secret_file.display()
    );
    let config =
        base_config(broker.port) + &subscription("ops", &format!("http://127.0.0.1:{}/hook", server.port), &auth);
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let delivered = |n: usize| server.with(|s| s.hooks.iter().filter(|h| h.1 == 200).count() >= n);

    // Fetched once, sent with both events.
    publish(broker.port, &[mission("agv-1", 1, "completed"), mission("agv-1", 2, "completed")]);
    assert!(wait_until(LONG, || delivered(2)), "{}", agent.log());
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("robot-7:s3cr3t-value"));
    server.with(|s| {
        assert_eq!(s.token_requests.len(), 1, "the token is cached");
        assert_eq!(s.token_requests[0].0, basic, "client_secret_basic");
        assert!(s.token_requests[0].1.contains("grant_type=client_credentials"), "{}", s.token_requests[0].1);
        assert!(s.token_requests[0].1.contains("scope=events%3Awrite"), "{}", s.token_requests[0].1);
        assert!(s.hooks.iter().all(|h| h.0 == "Bearer tok-1" && h.1 == 200));
    });

    // The receiver revokes it: a 401, one new token, the same attempt sent again.
    server.with(|s| s.revoked = true);
    publish(broker.port, &[mission("agv-1", 3, "completed")]);
    assert!(wait_until(LONG, || delivered(3)), "{}", agent.log());
    server.with(|s| {
        assert_eq!(s.token_requests.len(), 2);
        let third: Vec<_> = s.hooks.iter().filter(|h| h.2 == "\"m-3\"").map(|h| (h.0.as_str(), h.1)).collect();
        assert_eq!(third, [("Bearer tok-1", 401), ("Bearer tok-2", 200)]);
    });

    // The token endpoint is down for longer than the whole retry schedule (3 × 200 ms):
    // the delivery waits as if offline, then goes once a token comes.
    server.with(|s| {
        s.revoked = true;
        s.token_down = true;
    });
    publish(broker.port, &[mission("agv-1", 4, "completed")]);
    assert!(wait_until(LONG, || server.with(|s| s.token_requests.len() >= 5)), "{}", agent.log());
    std::thread::sleep(Duration::from_millis(1500));
    let state: String =
        agent.db().query_row("SELECT state FROM deliveries ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(state, "pending", "a token outage is not the endpoint's failure");
    assert!(agent.log().contains("Cannot get an OAuth2 token"), "{}", agent.log());
    assert!(agent.log().contains("HTTP 503"), "the token endpoint's answer is in the log");
    server.with(|s| s.token_down = false);
    assert!(wait_until(LONG, || delivered(4)), "{}", agent.log());
    server.with(|s| {
        let fourth: Vec<_> = s.hooks.iter().filter(|h| h.2 == "\"m-4\"").map(|h| (h.0.clone(), h.1)).collect();
        assert_eq!(fourth.last().unwrap().1, 200, "{fourth:?}");
        assert!(!s.token_requests.iter().any(|r| r.1.contains("s3cr3t")), "the secret goes in the Basic header only");
    });
    assert!(!agent.log().contains("s3cr3t-value") && !agent.log().contains("tok-"), "no secret or token is logged");
}

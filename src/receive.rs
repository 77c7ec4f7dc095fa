//! `fleethook receive`: a local endpoint for bring-up that verifies every request, in
//! whatever scheme it is signed, and prints the event. The demo uses it too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sign::{self, Scheme};

const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// Secrets to verify with; empty accepts unsigned requests.
    pub secrets: Vec<String>,
    pub tolerance: Duration,
    /// Print one line per request to stdout.
    pub print: bool,
    /// Print the whole body as well.
    pub print_body: bool,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Received {
    pub method: String,
    pub scheme: Option<Scheme>,
    pub verified: bool,
    pub error: Option<String>,
    pub event_type: Option<String>,
    pub delivery_id: Option<String>,
    pub attempt: Option<String>,
    /// A batch's id and size (`P-Batch`, `P-Batch-Size`): `body` holds its envelopes.
    pub batch: Option<(String, String)>,
    /// `Content-Encoding` (gzip, zstd): verified as sent, then decoded into `body`.
    pub encoding: Option<String>,
    pub body: String,
    /// How far the signer's clock is from ours, in words, when it is off by more than
    /// a few seconds (read from the signature's timestamp).
    pub skew: Option<String>,
}

/// Which scheme signed a request, and the header prefix it used.
pub fn detect_scheme(headers: &http::HeaderMap) -> (Option<Scheme>, String) {
    if headers.contains_key("webhook-signature") {
        let prefix = prefix_of(headers).unwrap_or_else(|| "X-Fleethook".into());
        return (Some(Scheme::Standard), prefix);
    }
    for (name, value) in headers {
        let n = name.as_str();
        if let Some(prefix) = n.strip_suffix("-signature") {
            let v = value.to_str().unwrap_or("");
            if v.starts_with("sha256=") {
                return (Some(Scheme::Sha256), prefix.to_string());
            }
            if v.starts_with("t=") {
                return (Some(Scheme::Stripe), prefix.to_string());
            }
        }
    }
    (None, prefix_of(headers).unwrap_or_else(|| "X-Fleethook".into()))
}

/// The prefix of the `P-Event` header, if any.
fn prefix_of(headers: &http::HeaderMap) -> Option<String> {
    headers.keys().find_map(|k| {
        let k = k.as_str();
        k.strip_suffix("-delivery").or_else(|| k.strip_suffix("-batch-size")).map(str::to_string)
    })
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Verifies one request: pure, for tests and for [`serve`].
pub fn check(opts: &ReceiveOptions, method: &str, headers: &http::HeaderMap, body: &[u8], now: SystemTime) -> Received {
    let (scheme, prefix) = detect_scheme(headers);
    let secrets: Vec<&str> = opts.secrets.iter().map(String::as_str).collect();
    // The signature covers the body as sent: verified before it is decoded.
    let verified = match scheme {
        _ if secrets.is_empty() => Ok(()),
        None => Err("the request is not signed".to_string()),
        Some(s) => sign::verify(s, &secrets, &prefix, headers, body, now, opts.tolerance).map_err(|e| e.to_string()),
    };
    let encoding = header(headers, "content-encoding").filter(|e| !e.eq_ignore_ascii_case("identity"));
    let decoded = decode(encoding.as_deref(), body);
    let result = verified.and(decoded.as_ref().map(|_| ()).map_err(Clone::clone));
    let body = decoded.unwrap_or_else(|_| body.to_vec());
    Received {
        method: method.to_string(),
        scheme,
        verified: result.is_ok() && !secrets.is_empty(),
        error: result.err(),
        event_type: header(headers, &format!("{prefix}-event")),
        delivery_id: header(headers, &format!("{prefix}-delivery")),
        attempt: header(headers, &format!("{prefix}-attempt")),
        batch: header(headers, &format!("{prefix}-batch"))
            .map(|id| (id, header(headers, &format!("{prefix}-batch-size")).unwrap_or_else(|| "?".into()))),
        encoding,
        body: String::from_utf8_lossy(&body).into_owned(),
        skew: signed_at(headers, &prefix).and_then(|ts| {
            crate::clock::skew_words(ts.saturating_mul(1000), crate::clock::unix_s(now).saturating_mul(1000))
        }),
    }
}

/// A body as its `Content-Encoding` says, up to [`MAX_BODY`] decoded.
fn decode(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let read = match encoding.map(str::to_ascii_lowercase).as_deref() {
        None => return Ok(body.to_vec()),
        Some("gzip") => flate2::read::GzDecoder::new(body).take(MAX_BODY as u64 + 1).read_to_end(&mut out),
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body).and_then(|d| d.take(MAX_BODY as u64 + 1).read_to_end(&mut out))
        }
        Some(other) => return Err(format!("Content-Encoding `{other}` is not gzip or zstd")),
    };
    match read {
        Ok(n) if n > MAX_BODY => Err(format!("the body decodes to more than {MAX_BODY} bytes")),
        Ok(_) => Ok(out),
        Err(e) => Err(format!("the body does not decode as {}: {e}", encoding.unwrap_or_default())),
    }
}

/// The Unix time a signature says it was made at (`webhook-timestamp`, or Stripe's `t=`).
fn signed_at(headers: &http::HeaderMap, prefix: &str) -> Option<i64> {
    if let Some(ts) = header(headers, "webhook-timestamp") {
        return ts.trim().parse().ok();
    }
    let sig = header(headers, &format!("{prefix}-signature"))?;
    sig.split(',').find_map(|part| part.trim().strip_prefix("t=")).and_then(|t| t.parse().ok())
}

fn print(r: &Received, with_body: bool) {
    let mark = if r.error.is_some() {
        "✗ REJECTED"
    } else if r.verified {
        "✓ verified"
    } else {
        "· unsigned"
    };
    let scheme = r.scheme.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_else(|| "none".into());
    let attempt = r.attempt.as_deref().unwrap_or("?");
    let mut line = match &r.batch {
        Some((id, size)) => format!("{mark} ({scheme}) {} batch={id} events={size} attempt={attempt}", r.method),
        None => format!(
            "{mark} ({scheme}) {} {} delivery={} attempt={attempt}",
            r.method,
            r.event_type.as_deref().unwrap_or("?"),
            r.delivery_id.as_deref().unwrap_or("?"),
        ),
    };
    if let Some(e) = &r.error {
        line.push_str(&format!(": {e}"));
    }
    if let Some(skew) = &r.skew {
        line.push_str(&format!(" ({skew})"));
    }
    if let Some(encoding) = &r.encoding {
        line.push_str(&format!(" [{encoding}]"));
    }
    println!("{line}");
    if with_body {
        println!("  {}", r.body);
    }
}

async fn handle(
    req: Request<Incoming>,
    opts: Arc<ReceiveOptions>,
    tx: Option<mpsc::UnboundedSender<Received>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"body too large or broken\n")));
            *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return Ok(resp);
        }
    };
    let r = check(&opts, parts.method.as_str(), &parts.headers, &body, SystemTime::now());
    if opts.print {
        print(&r, opts.print_body);
    }
    let (status, text) = match &r.error {
        None => (StatusCode::NO_CONTENT, String::new()),
        Some(e) => (StatusCode::UNAUTHORIZED, format!("signature check failed: {e}\n")),
    };
    if let Some(tx) = tx {
        let _ = tx.send(r);
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    Ok(resp)
}

/// Serves until `shutdown`. Each verified (or rejected) request is also sent to `tx`.
pub async fn serve(
    listener: TcpListener,
    opts: ReceiveOptions,
    tx: Option<mpsc::UnboundedSender<Received>>,
    shutdown: CancellationToken,
) {
    let opts = Arc::new(opts);
    crate::http_server::serve(listener, move |req| handle(req, opts.clone(), tx.clone()), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_verifies_each_scheme_and_prefix() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let now = SystemTime::now();
        let ts = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        // Secrets of mixed kinds: each scheme tries those that fit it.
        let opts = ReceiveOptions {
            secrets: vec!["plain-secret".into(), "whsec_not base64!".into(), secret.into()],
            tolerance: sign::DEFAULT_TOLERANCE,
            print: false,
            print_body: false,
        };
        for (scheme, prefix) in
            [(Scheme::Standard, "x-fleethook"), (Scheme::Sha256, "x-robotrace"), (Scheme::Stripe, "x-fleethook")]
        {
            let key = sign::signing_key(scheme, secret).unwrap();
            let mut h = http::HeaderMap::new();
            for (k, v) in sign::sign_headers(scheme, &[key], prefix, "d1", ts, b"{}") {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h.insert(
                http::HeaderName::from_bytes(format!("{prefix}-delivery").as_bytes()).unwrap(),
                "d1".parse().unwrap(),
            );
            let r = check(&opts, "POST", &h, b"{}", now);
            assert!(r.verified, "{scheme:?}: {:?}", r.error);
            assert_eq!(r.scheme, Some(scheme));
            assert_eq!(r.delivery_id.as_deref(), Some("d1"));
            assert!(!check(&opts, "POST", &h, b"{\"x\":1}", now).verified);
        }
        assert!(check(&opts, "POST", &http::HeaderMap::new(), b"{}", now).error.is_some());
    }

    #[test]
    fn a_compressed_body_is_verified_as_sent_then_decoded() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let now = SystemTime::now();
        let ts = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let opts = ReceiveOptions {
            secrets: vec![secret.into()],
            tolerance: sign::DEFAULT_TOLERANCE,
            print: false,
            print_body: false,
        };
        let json = br#"{"type":"mission.completed"}"#;
        for how in [crate::config::Compression::Gzip, crate::config::Compression::Zstd] {
            let sent = crate::delivery::compress::compress(how, json);
            let key = sign::signing_key(Scheme::Standard, secret).unwrap();
            let mut h = http::HeaderMap::new();
            for (k, v) in sign::sign_headers(Scheme::Standard, &[key], "x-fleethook", "d1", ts, &sent) {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h.insert("content-encoding", how.encoding().parse().unwrap());
            let r = check(&opts, "POST", &h, &sent, now);
            assert!(r.verified, "{how:?}: {:?}", r.error);
            assert_eq!(r.body.as_bytes(), json);
            // Signed over the decoded body instead: rejected.
            let r = check(&opts, "POST", &h, json, now);
            assert!(!r.verified && r.error.is_some());
        }
    }

    #[test]
    fn a_signer_with_a_clock_in_2001_is_told_so_plainly() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let opts = ReceiveOptions {
            secrets: vec![secret.into()],
            tolerance: sign::DEFAULT_TOLERANCE,
            print: false,
            print_body: false,
        };
        let key = sign::signing_key(Scheme::Standard, secret).unwrap();
        let mut h = http::HeaderMap::new();
        for (k, v) in sign::sign_headers(Scheme::Standard, &[key], "x-fleethook", "d1", 978_307_200, b"{}") {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_547_200);
        let r = check(&opts, "POST", &h, b"{}", now);
        assert!(!r.verified, "outside the tolerance");
        assert_eq!(r.skew.as_deref(), Some("the agent's clock is 25 years behind the receiver's"));
    }
}

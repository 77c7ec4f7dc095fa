//! Signing and verifying webhooks, every scheme docs/receivers.md lists. Pure functions, tested
//! against fixed vectors (including the Standard Webhooks spec's published example).
//!
//! Receivers in Rust can call [`verify`] directly:
//!
//! ```
//! use fleethook::sign::{self, Scheme};
//! # let (headers, body) = (http::HeaderMap::new(), b"{}");
//! let ok = sign::verify(Scheme::Standard, &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
//!     "X-Fleethook", &headers, body, std::time::SystemTime::now(), sign::DEFAULT_TOLERANCE);
//! assert!(ok.is_err()); // no signature headers here
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now when verifying (as Standard Webhooks).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`.
    Standard,
    /// GitHub style: `P-Signature: sha256=<hex>` over the body.
    Sha256,
    /// Stripe style: `P-Signature: t=<ts>,v1=<hex>` over `<ts>.<body>`.
    Stripe,
    None,
}

impl Scheme {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Scheme::Standard),
            "sha256" => Ok(Scheme::Sha256),
            "stripe" => Ok(Scheme::Stripe),
            "none" => Ok(Scheme::None),
            other => Err(format!("`{other}` is not a signature scheme (standard, sha256, stripe, none)")),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("a standard secret must start with `whsec_`")]
    MissingPrefix,
    #[error("the part after `whsec_` is not valid base64")]
    BadBase64,
    #[error("the secret is empty")]
    Empty,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("malformed header {0}")]
    Malformed(String),
    #[error("timestamp outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
    #[error(transparent)]
    Key(#[from] SignError),
}

/// The HMAC key a secret stands for under a scheme: `whsec_` secrets are base64 of the
/// key (Standard Webhooks); the other schemes use the secret's UTF-8 bytes.
pub fn signing_key(scheme: Scheme, secret: &str) -> Result<Vec<u8>, SignError> {
    if secret.is_empty() {
        return Err(SignError::Empty);
    }
    match scheme {
        Scheme::Standard => {
            let b64 = secret.strip_prefix("whsec_").ok_or(SignError::MissingPrefix)?;
            let key = B64.decode(b64).map_err(|_| SignError::BadBase64)?;
            if key.is_empty() {
                return Err(SignError::Empty);
            }
            Ok(key)
        }
        _ => Ok(secret.as_bytes().to_vec()),
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("hmac accepts any key length");
    for p in parts {
        m.update(p);
    }
    m
}

/// `base64(HMAC-SHA256(key, "<id>.<ts>.<body>"))`: one Standard Webhooks signature.
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let m = mac(key, &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    B64.encode(m.finalize().into_bytes())
}

/// hex(HMAC-SHA256(key, body)): the `sha256=` scheme.
pub fn sha256_signature(key: &[u8], body: &[u8]) -> String {
    hex::encode(mac(key, &[body]).finalize().into_bytes())
}

/// `hex(HMAC-SHA256(key, "<ts>.<body>"))`: one Stripe-style `v1=` value.
pub fn stripe_signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    hex::encode(mac(key, &[ts.as_bytes(), b".", body]).finalize().into_bytes())
}

/// The signature headers for one attempt. `keys` are already decoded ([`signing_key`]).
/// With `standard` and `stripe` every key signs, so a receiver holding any one of them
/// verifies during a rotation; with `sha256` only the first does.
pub fn sign_headers(
    scheme: Scheme,
    keys: &[Vec<u8>],
    header_prefix: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    match scheme {
        Scheme::None => Vec::new(),
        Scheme::Standard => {
            let sigs: Vec<String> =
                keys.iter().map(|k| format!("v1,{}", standard_signature(k, msg_id, timestamp, body))).collect();
            vec![
                ("webhook-id".into(), msg_id.to_string()),
                ("webhook-timestamp".into(), timestamp.to_string()),
                ("webhook-signature".into(), sigs.join(" ")),
            ]
        }
        // GitHub-style verifiers compare the whole header with one `sha256=<hex>`: only
        // the first secret signs (rotation: the receiver accepts both, then the agent
        // switches).
        Scheme::Sha256 => match keys.first() {
            Some(k) => vec![(format!("{header_prefix}-Signature"), format!("sha256={}", sha256_signature(k, body)))],
            None => Vec::new(),
        },
        Scheme::Stripe => {
            let mut value = format!("t={timestamp}");
            for k in keys {
                value.push_str(",v1=");
                value.push_str(&stripe_signature(k, timestamp, body));
            }
            vec![(format!("{header_prefix}-Signature"), value)]
        }
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Result<&'a str, VerifyError> {
    headers
        .get(name)
        .ok_or_else(|| VerifyError::MissingHeader(name.to_string()))?
        .to_str()
        .map_err(|_| VerifyError::Malformed(name.to_string()))
}

fn check_time(ts: &str, name: &str, now: SystemTime, tolerance: Duration) -> Result<i64, VerifyError> {
    let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::Malformed(name.to_string()))?;
    let now_s = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    // A header's number is anyone's: i128 so that `i64::MIN` cannot overflow.
    if (i128::from(now_s) - i128::from(ts)).unsigned_abs() > u128::from(tolerance.as_secs()) {
        return Err(VerifyError::Stale);
    }
    Ok(ts)
}

/// Verifies one request against any of `secrets` (constant-time comparison).
pub fn verify(
    scheme: Scheme,
    secrets: &[&str],
    header_prefix: &str,
    headers: &http::HeaderMap,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    // Each scheme tries the secrets that fit it: a receiver may hold a `whsec_` secret
    // for one sender and a plain one for another. Only if none fits is that an error.
    let mut keys = Vec::new();
    let mut unfit = None;
    for s in secrets {
        match signing_key(scheme, s) {
            Ok(k) => keys.push(k),
            Err(e) => unfit = unfit.or(Some(e)),
        }
    }
    if keys.is_empty()
        && let Some(e) = unfit
    {
        return Err(e.into());
    }
    let sig_header = format!("{header_prefix}-Signature");
    match scheme {
        Scheme::None => Ok(()),
        Scheme::Standard => {
            let id = header(headers, "webhook-id")?;
            let ts_raw = header(headers, "webhook-timestamp")?;
            let ts = check_time(ts_raw, "webhook-timestamp", now, tolerance)?;
            let sigs = header(headers, "webhook-signature")?;
            let ts_s = ts.to_string();
            for candidate in sigs.split(' ') {
                let Some(b64) = candidate.strip_prefix("v1,") else { continue };
                let Ok(raw) = B64.decode(b64) else { continue };
                for k in &keys {
                    let m = mac(k, &[id.as_bytes(), b".", ts_s.as_bytes(), b".", body]);
                    if m.verify_slice(&raw).is_ok() {
                        return Ok(());
                    }
                }
            }
            Err(VerifyError::Mismatch)
        }
        Scheme::Sha256 => {
            let value = header(headers, &sig_header)?;
            for candidate in value.split(',') {
                let Some(hexsig) = candidate.trim().strip_prefix("sha256=") else { continue };
                let Ok(raw) = hex::decode(hexsig) else { continue };
                if keys.iter().any(|k| mac(k, &[body]).verify_slice(&raw).is_ok()) {
                    return Ok(());
                }
            }
            Err(VerifyError::Mismatch)
        }
        Scheme::Stripe => {
            let value = header(headers, &sig_header)?;
            let mut ts_raw = None;
            let mut sigs = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", t)) => ts_raw = Some(t),
                    Some(("v1", s)) => sigs.push(s),
                    _ => {}
                }
            }
            let ts_raw = ts_raw.ok_or_else(|| VerifyError::Malformed(sig_header.clone()))?;
            let ts = check_time(ts_raw, &sig_header, now, tolerance)?;
            let ts_s = ts.to_string();
            for s in sigs {
                let Ok(raw) = hex::decode(s) else { continue };
                if keys.iter().any(|k| mac(k, &[ts_s.as_bytes(), b".", body]).verify_slice(&raw).is_ok()) {
                    return Ok(());
                }
            }
            Err(VerifyError::Mismatch)
        }
    }
}

/// A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random source is available");
    format!("whsec_{}", B64.encode(key))
}

/// A short, non-reversible name for a secret, safe to print: `sha256:` and 8 hex digits.
pub fn fingerprint(secret: &str) -> String {
    use sha2::Digest;
    let digest = Sha256::digest(secret.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(String, String)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    /// The example published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_spec_vector() {
        let key = signing_key(Scheme::Standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// GitHub's documented example for X-Hub-Signature-256.
    #[test]
    fn github_sha256_vector() {
        let sig = sha256_signature(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(sig, "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    }

    /// RFC 4231 test case 2 ("Jefe"), through the Stripe layout `<ts>.<body>` with the
    /// timestamp folded into the message.
    #[test]
    fn stripe_layout_is_hmac_of_ts_dot_body() {
        let direct = sha256_signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(direct, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let stripe = stripe_signature(b"Jefe", 12, b"body");
        assert_eq!(stripe, sha256_signature(b"Jefe", b"12.body"));
    }

    #[test]
    fn every_scheme_round_trips_and_rejects_tampering() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for scheme in [Scheme::Standard, Scheme::Sha256, Scheme::Stripe] {
            let key = signing_key(scheme, secret).unwrap();
            let h = headers(&sign_headers(scheme, &[key], "X-Fleethook", "d1", 1_700_000_000, b"{}"));
            verify(scheme, &[secret], "X-Fleethook", &h, b"{}", at(1_700_000_010), DEFAULT_TOLERANCE)
                .unwrap_or_else(|e| panic!("{scheme:?}: {e}"));
            assert_eq!(
                verify(scheme, &[secret], "X-Fleethook", &h, b"{ }", at(1_700_000_010), DEFAULT_TOLERANCE),
                Err(VerifyError::Mismatch),
                "{scheme:?}"
            );
        }
    }

    #[test]
    fn rotation_signs_with_every_secret_except_sha256_which_signs_with_the_first() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = new_secret();
        for scheme in [Scheme::Standard, Scheme::Stripe] {
            let keys = vec![signing_key(scheme, old).unwrap(), signing_key(scheme, &new).unwrap()];
            let h = headers(&sign_headers(scheme, &keys, "X-Fleethook", "d1", 1_700_000_000, b"x"));
            for s in [old, new.as_str()] {
                verify(scheme, &[s], "X-Fleethook", &h, b"x", at(1_700_000_000), DEFAULT_TOLERANCE).unwrap();
            }
        }
        let keys = vec![b"first".to_vec(), b"second".to_vec()];
        let h = sign_headers(Scheme::Sha256, &keys, "X-Fleethook", "d1", 0, b"x");
        assert_eq!(
            h,
            vec![("X-Fleethook-Signature".to_string(), format!("sha256={}", sha256_signature(b"first", b"x")))]
        );
    }

    #[test]
    fn each_scheme_tries_the_secrets_that_fit_it() {
        let standard = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let mixed = [standard, "plain-secret", "whsec_not base64!"];
        let now = at(1_700_000_000);
        let key = signing_key(Scheme::Standard, standard).unwrap();
        let h = headers(&sign_headers(Scheme::Standard, &[key], "X", "d1", 1_700_000_000, b"x"));
        verify(Scheme::Standard, &mixed, "X", &h, b"x", now, DEFAULT_TOLERANCE).unwrap();
        let h = headers(&sign_headers(Scheme::Stripe, &[b"plain-secret".to_vec()], "X", "d1", 1_700_000_000, b"x"));
        verify(Scheme::Stripe, &mixed, "X", &h, b"x", now, DEFAULT_TOLERANCE).unwrap();
        assert_eq!(
            verify(Scheme::Standard, &["plain"], "X", &h, b"x", now, DEFAULT_TOLERANCE),
            Err(VerifyError::Key(SignError::MissingPrefix)),
            "no secret fits: say why"
        );
    }

    #[test]
    fn stale_timestamps_and_bad_secrets_are_refused() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = signing_key(Scheme::Standard, secret).unwrap();
        let h = headers(&sign_headers(Scheme::Standard, &[key], "X", "d1", 1_700_000_000, b"x"));
        let late = at(1_700_000_000 + 301);
        assert_eq!(
            verify(Scheme::Standard, &[secret], "X", &h, b"x", late, DEFAULT_TOLERANCE),
            Err(VerifyError::Stale)
        );
        assert_eq!(signing_key(Scheme::Standard, "plain"), Err(SignError::MissingPrefix));
        assert_eq!(signing_key(Scheme::Standard, "whsec_!!"), Err(SignError::BadBase64));
        assert!(new_secret().starts_with("whsec_"));
        assert_eq!(fingerprint("abc").len(), "sha256:".len() + 8);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a request's headers say (timestamps of any size, any signature
        /// text), verification answers and never panics.
        #[test]
        fn verification_of_any_headers_never_panics(
            ts in prop_oneof![any::<i64>().prop_map(|t| t.to_string()), proptest::string::string_regex("[ -~]{0,30}").unwrap()],
            sig in "[ -~]{0,120}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let h = headers(&[
                ("webhook-id".into(), "msg_1".into()),
                ("webhook-timestamp".into(), ts.clone()),
                ("webhook-signature".into(), sig.clone()),
                ("X-Fleethook-Signature".into(), format!("t={ts},{sig}")),
            ]);
            for scheme in [Scheme::Standard, Scheme::Sha256, Scheme::Stripe] {
                let secret = if scheme == Scheme::Standard { "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" } else { "s" };
                let _ = verify(scheme, &[secret], "X-Fleethook", &h, &body, at(1_700_000_000), DEFAULT_TOLERANCE);
            }
        }
    }
}

//! OAuth2 client credentials (RFC 6749 §4.4) for a subscription: the access token is
//! fetched from `token_url` when first needed, kept in memory, and fetched again before
//! it expires or when the endpoint answers 401 to it. One fetch at a time per
//! subscription: attempts that need a token while one is being fetched wait for it.
//!
//! The token endpoint's own failures (unreachable, an error answer, a body without a
//! token) are the attempt's transport error [`TransportError::Token`], which the rule
//! table treats as offline: the delivery keeps its retry budget and the endpoint is
//! probed with backoff, so a token server outage costs no events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::outcome::TransportError;
use crate::config::OAuth2;

/// A token is fetched again this long before it expires (or at half its life, if that
/// is sooner), so a request never carries one that expires in flight.
const EARLY: Duration = Duration::from_secs(60);
/// A token that says nothing of its lifetime is kept this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(300);
/// A stated lifetime is trusted up to this long: `expires_in` is the token endpoint's
/// word, and a huge one (`18446744073709551615`) must neither overflow nor keep a token
/// past any rotation.
const LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);
/// The token endpoint's answer is read up to this much.
const BODY_MAX: usize = 64 * 1024;

/// The tokens of one subscription.
#[derive(Clone)]
pub struct TokenSource {
    config: Arc<OAuth2>,
    client: reqwest::Client,
    /// Whether the client trusts a subscription's `ca_file` (for what a TLS error says).
    ca_file: bool,
    cached: Arc<Mutex<Option<Cached>>>,
}

struct Cached {
    token: String,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// A number of seconds, as the RFC has it; some servers send it as a string or a
    /// float, and a hostile one anything (`1e400`, which no f64 holds: parsed as a value
    /// it failed the whole answer). Kept as written; read by [`stated_lifetime`].
    #[serde(default)]
    expires_in: Option<Box<serde_json::value::RawValue>>,
}

/// [`lifetime`] of `expires_in` as written: a number too large for any type is junk, so
/// unstated.
fn stated_lifetime(raw: Option<&serde_json::value::RawValue>) -> Duration {
    match raw.map(|r| serde_json::from_str::<serde_json::Value>(r.get())) {
        None => lifetime(None),
        Some(Ok(v)) => lifetime(Some(&v)),
        Some(Err(_)) => UNSTATED_LIFETIME,
    }
}

/// A token's lifetime from its `expires_in`: seconds as a number or a numeric string,
/// clamped to [`LIFETIME_MAX`]; absent, unreadable, zero or negative is taken as
/// unstated ([`UNSTATED_LIFETIME`]; a 401 fetches a new one sooner anyway).
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    let secs = match expires_in {
        None | Some(Value::Null) => return UNSTATED_LIFETIME,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(LIFETIME_MAX.as_secs_f64())),
        _ => UNSTATED_LIFETIME,
    }
}

/// When a token fetched at `started` with `life` is fetched again: `EARLY` before it
/// expires, or at half its life if that is sooner. Never panics.
fn refresh_at(started: Instant, life: Duration) -> Instant {
    let early = life.saturating_sub(EARLY).min(life / 2);
    started.checked_add(early).unwrap_or(started)
}

impl TokenSource {
    pub fn new(config: OAuth2, client: reqwest::Client, ca_file: bool) -> Self {
        TokenSource { config: Arc::new(config), client, ca_file, cached: Arc::default() }
    }

    /// A token good for now: the cached one, or a new one.
    pub async fn token(&self) -> Result<String, (TransportError, String)> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// After the endpoint refused `stale` with a 401: a new token, unless another attempt
    /// has already replaced it.
    pub async fn refresh(&self, stale: &str) -> Result<String, (TransportError, String)> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.token != stale && Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self) -> Result<Cached, (TransportError, String)> {
        let failed =
            |why: String| (TransportError::Token, format!("OAuth2 token endpoint {}: {why}", self.config.token_url));
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.config.scope {
            form.push(("scope", scope));
        }
        let started = Instant::now();
        let resp = self
            .client
            .post(self.config.token_url.clone())
            .basic_auth(&self.config.client_id, Some(self.config.client_secret.expose()))
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(super::explain::explain(&e, self.ca_file)))?;
        let status = resp.status();
        let body = read_capped(resp).await;
        if !status.is_success() {
            // An OAuth2 error answer names its reason (`invalid_client`), which is what
            // an operator needs; a token is never in an error answer.
            let text = crate::text::printable(&String::from_utf8_lossy(&body)).chars().take(300).collect::<String>();
            return Err(failed(format!("HTTP {} {}", status.as_u16(), text)));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| failed(format!("the answer is not a token response: {e}")))?;
        if answer.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(failed(format!("token_type `{}` is not Bearer", answer.token_type.unwrap_or_default())));
        }
        if answer.access_token.is_empty()
            || reqwest::header::HeaderValue::from_str(&format!("Bearer {}", answer.access_token)).is_err()
        {
            return Err(failed("the access token is empty or not printable text".into()));
        }
        let life = stated_lifetime(answer.expires_in.as_deref());
        let refresh_at = refresh_at(started, life);
        tracing::debug!(token_url = %self.config.token_url, expires_in_s = life.as_secs(), "Fetched an OAuth2 token.");
        Ok(Cached { token: answer.access_token, refresh_at })
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(BODY_MAX - body.len())]);
        if body.len() >= BODY_MAX {
            break;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn hostile_lifetimes_are_clamped() {
        assert_eq!(lifetime(Some(&json!(18446744073709551615u64))), LIFETIME_MAX);
        assert_eq!(lifetime(Some(&json!(1e300))), LIFETIME_MAX);
        assert_eq!(lifetime(Some(&json!(3600))), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(&json!("3600"))), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(&json!(-5))), UNSTATED_LIFETIME);
        assert_eq!(lifetime(Some(&json!("soon"))), UNSTATED_LIFETIME);
        assert_eq!(lifetime(None), UNSTATED_LIFETIME);
        // Past any number type: the answer still parses, and the lifetime is unstated.
        let answer: TokenAnswer = serde_json::from_str(r#"{"access_token":"t","expires_in":1e400}"#).unwrap();
        assert_eq!(stated_lifetime(answer.expires_in.as_deref()), UNSTATED_LIFETIME);
        let answer: TokenAnswer = serde_json::from_str(r#"{"access_token":"t","expires_in":"60"}"#).unwrap();
        assert_eq!(stated_lifetime(answer.expires_in.as_deref()), Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(refresh_at(t, Duration::from_secs(3600)), t + Duration::from_secs(1800));
        assert_eq!(refresh_at(t, Duration::from_secs(100)), t + Duration::from_secs(40));
        assert_eq!(refresh_at(t, Duration::from_secs(60)), t);
        assert_eq!(refresh_at(t, Duration::MAX), t, "an instant that cannot be reached is now");
    }

    proptest! {
        /// Any token answer: parsed or refused, and a lifetime that never panics.
        #[test]
        fn any_token_answer_is_an_answer(body in "(?s).{0,200}", n in any::<f64>(), i in any::<i128>()) {
            if let Ok(answer) = serde_json::from_str::<TokenAnswer>(&body) {
                let _ = refresh_at(Instant::now(), stated_lifetime(answer.expires_in.as_deref()));
            }
            for v in [json!(n), json!(i.to_string()), serde_json::from_str(&i.to_string()).unwrap_or(json!(null))] {
                let life = lifetime(Some(&v));
                prop_assert!(life <= LIFETIME_MAX);
                let _ = refresh_at(Instant::now(), life);
            }
        }
    }
}

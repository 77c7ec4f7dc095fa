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
/// The token endpoint's answer is read up to this much.
const BODY_MAX: usize = 64 * 1024;

/// The tokens of one subscription.
#[derive(Clone)]
pub struct TokenSource {
    config: Arc<OAuth2>,
    client: reqwest::Client,
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
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    pub fn new(config: OAuth2, client: reqwest::Client) -> Self {
        TokenSource { config: Arc::new(config), client, cached: Arc::default() }
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
            .map_err(|e| failed(super::http::describe(&e)))?;
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
        let life = answer.expires_in.map_or(UNSTATED_LIFETIME, Duration::from_secs);
        let refresh_at = started + life.saturating_sub(EARLY).min(life / 2);
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

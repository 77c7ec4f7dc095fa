//! A subscription's `auth`: a static bearer token from a file, or OAuth2 client
//! credentials (RFC 6749 §4.4) whose token the dispatcher fetches and caches.

use serde::{Serialize, Serializer};

use super::super::raw::RawAuth;
use super::super::secret::{self, Secret, SecretSource};
use super::{Issues, KeyPath};

/// How a subscription authenticates beyond its signature.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// `auth = { bearer_file = "…" }`: `Authorization: Bearer <token>` as read.
    Bearer(Secret),
    /// `auth = { token_url, client_id, client_secret…, scope }`.
    OAuth2(OAuth2),
}

/// OAuth2 client credentials: the client authenticates to `token_url` with HTTP Basic,
/// as RFC 6749 §2.3.1 says every server must accept.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth2 {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
}

impl Serialize for Auth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match self {
            Auth::Bearer(token) => {
                if let Some((_, path)) = token.origin() {
                    map.serialize_entry("bearer_file", path)?;
                }
            }
            Auth::OAuth2(o) => {
                map.serialize_entry("token_url", o.token_url.as_str())?;
                map.serialize_entry("client_id", &o.client_id)?;
                match o.client_secret.origin() {
                    Some((key, name)) => map.serialize_entry(&format!("client_{key}"), name)?,
                    None => map.serialize_entry("client_secret", &o.client_secret)?,
                }
                if let Some(scope) = &o.scope {
                    map.serialize_entry("scope", scope)?;
                }
            }
        }
        map.end()
    }
}

/// The `auth` table, checked: one way to authenticate, every key it needs.
pub(super) fn build(a: &RawAuth, allow_http: bool, p: &KeyPath, issues: &mut Issues) -> Option<Auth> {
    let ap = p.key("auth");
    let sources = [
        (SecretSource::Inline, &a.client_secret),
        (SecretSource::File, &a.client_secret_file),
        (SecretSource::Env, &a.client_secret_env),
        (SecretSource::Credential, &a.client_secret_credential),
    ];
    let given: Vec<(SecretSource, &String)> = sources.iter().filter_map(|(s, v)| v.as_ref().map(|v| (*s, v))).collect();
    match (&a.bearer_file, &a.token_url) {
        (Some(_), Some(_)) => {
            issues.push(ap.key("token_url"), "bearer_file and token_url are two ways to authenticate; keep one");
            None
        }
        (Some(file), None) => {
            let token = secret::load(SecretSource::File, file).and_then(|t| {
                match http::HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                    Ok(_) => Ok(t),
                    Err(_) => Err(format!("{file}: the token must be one line of printable text")),
                }
            });
            issues.take(ap.key("bearer_file"), token).map(Auth::Bearer)
        }
        (None, Some(url)) => {
            let token_url = match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => Some(u),
                Ok(_) => {
                    issues.push(
                        ap.key("token_url"),
                        "the token URL must be https:// (http:// only with the subscription's allow_http)",
                    );
                    None
                }
                Err(e) => {
                    issues.push(ap.key("token_url"), format!("`{url}` is not a URL: {e}"));
                    None
                }
            };
            let client_id = a.client_id.clone().filter(|c| !c.is_empty());
            if client_id.is_none() {
                issues.push(ap.key("client_id"), "OAuth2 client credentials need client_id");
            }
            let client_secret = match given.as_slice() {
                [(source, value)] => {
                    let key = format!("client_{}", source.key());
                    let loaded = issues.take(ap.key(&key), secret::load(*source, value));
                    if let Some(s) = &loaded {
                        issues.redacted(ap.key(&key), s);
                    }
                    loaded
                }
                [] => {
                    issues.push(
                        ap.key("client_secret"),
                        "OAuth2 client credentials need one of client_secret, client_secret_file, client_secret_env \
                         or client_secret_credential",
                    );
                    None
                }
                _ => {
                    issues.push(ap.key("client_secret"), "set the client secret once, from one source");
                    None
                }
            };
            Some(Auth::OAuth2(OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scope: a.scope.clone().filter(|s| !s.is_empty()),
            }))
        }
        (None, None) => {
            issues.push(ap, "auth needs bearer_file, or token_url with client_id and a client secret");
            None
        }
    }
}

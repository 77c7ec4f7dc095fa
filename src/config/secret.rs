//! Secrets: never printed, never logged; only a fingerprint shows.

use std::fmt;

use serde::{Serialize, Serializer};

/// A secret value. `Debug`, `Display` and `Serialize` show only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for signing or an auth header. Do not format it anywhere.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn fingerprint(&self) -> String {
        crate::sign::fingerprint(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted {}>)", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {}>", self.fingerprint())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Where a secret came from, for error messages.
#[derive(Clone, Copy, Debug)]
pub enum SecretSource {
    Inline,
    File,
    Env,
    Credential,
}

/// Reads a secret from its source. A trailing newline in a file is not part of it.
pub fn load(source: SecretSource, value: &str) -> Result<Secret, String> {
    let raw = match source {
        SecretSource::Inline => value.to_string(),
        SecretSource::File => {
            std::fs::read_to_string(value).map_err(|e| format!("cannot read secret file {value}: {e}"))?
        }
        SecretSource::Env => std::env::var(value).map_err(|_| format!("environment variable {value} is not set"))?,
        SecretSource::Credential => {
            let dir = std::env::var("CREDENTIALS_DIRECTORY").map_err(|_| {
                format!("credential {value}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)")
            })?;
            let path = std::path::Path::new(&dir).join(value);
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read credential {}: {e}", path.display()))?
        }
    };
    let trimmed = raw.trim_end_matches(['\n', '\r']).to_string();
    if trimmed.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Secret(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_format_their_value() {
        let s = Secret::new("whsec_supersecretvalue");
        for shown in [format!("{s:?}"), format!("{s}"), serde_json::to_string(&s).unwrap()] {
            assert!(!shown.contains("supersecret"), "{shown}");
            assert!(shown.contains("sha256:"), "{shown}");
        }
    }
}

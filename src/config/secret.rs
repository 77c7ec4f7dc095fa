//! Secrets: never printed, never logged; only a fingerprint shows.

use std::fmt;

use serde::{Serialize, Serializer};

/// The signing secret of the documentation and the shipped config (the Standard Webhooks
/// specification's example): public, the same on every robot that keeps it.
pub const EXAMPLE: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const EXAMPLE_REFUSED: &str = "the documentation's example secret: anyone can sign as this robot with it; make one with `fleethook secret` (the agent will not start with it on an enabled subscription)";

/// A secret value. `Debug`, `Display` and `Serialize` show only its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Where it was read from, when not written in the config itself: printed by
    /// `check` in its place, so the printed config loads back.
    origin: Option<(SecretSource, String)>,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret { value: value.into(), origin: None }
    }

    /// The secret itself, for signing or an auth header. Do not format it anywhere.
    pub fn expose(&self) -> &str {
        &self.value
    }

    pub fn fingerprint(&self) -> String {
        crate::sign::fingerprint(&self.value)
    }

    /// The config key and value that name where it was read from (`secret_file`, a
    /// path); `None` for a secret written in the config.
    pub fn origin(&self) -> Option<(&'static str, &str)> {
        self.origin.as_ref().map(|(source, name)| (source.key(), name.as_str()))
    }

    /// Whether this is the placeholder `check` prints for a secret (`<redacted
    /// sha256:…>`), read back: it loads for `check`, and the agent refuses to start.
    pub fn is_redacted(&self) -> bool {
        let v = &self.value;
        v.starts_with("<redacted sha256:") && v.ends_with('>') && v.len() < 40
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({self})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_redacted() {
            return f.write_str(&self.value);
        }
        write!(f, "<redacted {}>", self.fingerprint())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A subscription's secrets (several for rotation), printed under the keys they came
/// from: `secret` (redacted), `secret_file`, `secret_env`, `secret_credential`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<Secret>);

impl Serialize for Secrets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let sources = [SecretSource::Inline, SecretSource::File, SecretSource::Env, SecretSource::Credential];
        let mut map = s.serialize_map(None)?;
        for source in sources {
            let shown: Vec<String> = self
                .0
                .iter()
                .filter(|sec| sec.origin.as_ref().map_or(SecretSource::Inline, |o| o.0) == source)
                .map(|sec| sec.origin().map_or_else(|| sec.to_string(), |(_, name)| name.to_string()))
                .collect();
            match shown.as_slice() {
                [] => {}
                [one] => map.serialize_entry(source.key(), one)?,
                many => map.serialize_entry(source.key(), many)?,
            }
        }
        map.end()
    }
}

/// Where a secret came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Inline,
    File,
    Env,
    Credential,
}

impl SecretSource {
    /// The subscription key that names a secret of this source.
    pub fn key(self) -> &'static str {
        match self {
            SecretSource::Inline => "secret",
            SecretSource::File => "secret_file",
            SecretSource::Env => "secret_env",
            SecretSource::Credential => "secret_credential",
        }
    }
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
    let origin = (source != SecretSource::Inline).then(|| (source, value.to_string()));
    Ok(Secret { value: trimmed, origin })
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

    #[test]
    fn the_printed_placeholder_reads_back_as_itself() {
        let printed = Secret::new("whsec_supersecretvalue").to_string();
        let read_back = Secret::new(printed.clone());
        assert!(read_back.is_redacted() && !Secret::new("whsec_x").is_redacted());
        assert_eq!(read_back.to_string(), printed, "printing it again changes nothing");
    }
}

//! The `[[subscription]]` tables: URL, secrets, headers, client certificate, and every
//! per-subscription key, each checked with the key it belongs to.

use super::*;

pub(super) fn build_subscriptions(raw: Vec<RawSubscription>, root: &KeyPath, issues: &mut Issues) -> Vec<Subscription> {
    let mut names = HashSet::new();
    let mut subscriptions = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let p = root.key("subscription").index(i);
        if !names.insert(s.name.clone()) {
            issues.push(p.key("name"), format!("subscription name `{}` is used twice", s.name));
        }
        if let Some(sub) = build_subscription(s, p, issues) {
            subscriptions.push(sub);
        }
    }
    subscriptions
}

fn looks_secret(header: &str) -> bool {
    let h = header.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "cookie", "password"].iter().any(|w| h.contains(w))
}

fn build_subscription(mut s: RawSubscription, p: KeyPath, issues: &mut Issues) -> Option<Subscription> {
    if s.name.trim().is_empty() || s.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        issues.push(p.key("name"), "a subscription name is one word with no spaces");
    }
    let format = opt(issues, p.key("format"), s.format.as_ref(), Format::parse, Format::Envelope);
    // Service formats (Slack, PagerDuty, Datadog) authenticate by URL or key, not HMAC.
    let default_scheme = if format == Format::Envelope { Scheme::Standard } else { Scheme::None };
    let signature = opt(issues, p.key("signature"), s.signature.as_ref(), Scheme::parse, default_scheme);
    let allow_http = s.allow_http.unwrap_or(false);
    let url = subscription_url(&s.url, allow_http, &p, issues);

    let clock_policy = opt(
        issues,
        p.key("clock_policy"),
        s.clock_policy.as_ref(),
        |v| match v {
            "wait" => Ok(ClockPolicy::Wait),
            "strict" => Ok(ClockPolicy::Strict),
            "sign" => Ok(ClockPolicy::Sign),
            o => Err(format!("`{o}` is not wait, strict or sign")),
        },
        ClockPolicy::Wait,
    );
    let (secrets, keys) = subscription_secrets(&mut s, signature, &p, issues);
    let events = match &s.events {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, e)| issues.take(p.key("events").index(i), EventPattern::parse(e)))
            .collect(),
        None => vec![EventPattern::parse("*").expect("`*` is a valid pattern")],
    };
    let retry = match &s.retry {
        Some(list) if list.len() > range::RETRY_COUNT => {
            issues.push(p.key("retry"), format!("lists {} delays; at most {}", list.len(), range::RETRY_COUNT));
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| issues.take(p.key("retry").index(i), duration_in(range::RETRY_DELAY)(d)))
            .collect(),
        None => DEFAULT_RETRY.iter().map(|s| Duration::from_secs(*s)).collect(),
    };
    let method = s.method.clone().unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
    if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
        issues.push(p.key("method"), format!("`{method}` is not POST, PUT or PATCH"));
    }
    let header_prefix = s.header_prefix.clone().unwrap_or_else(|| "X-Fleethook".into());
    if http::HeaderName::from_bytes(format!("{header_prefix}-Event").as_bytes()).is_err() {
        issues.push(p.key("header_prefix"), format!("`{header_prefix}` cannot start a header name"));
    }
    let headers = subscription_headers(s.headers.clone().unwrap_or_default(), &p, issues);
    let (client_cert, client_key) = client_identity(&s.client_cert, &s.client_key, &p, issues);
    let compression = s.compression.as_deref().and_then(|c| {
        let parsed = match c {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            o => Err(format!("`{o}` is not gzip or zstd")),
        };
        issues.take(p.key("compression"), parsed)
    });
    if compression.is_some() && format != Format::Envelope {
        issues.push(
            p.key("compression"),
            format!(
                "compression is for format = \"envelope\" endpoints; {} takes plain JSON",
                format!("{format:?}").to_lowercase()
            ),
        );
    }
    let batch = s.batch.as_ref().and_then(|b| batch::build(b, format, &p, issues, None));
    let (max_rate, daily_budget, metered) = link::subscription(&s, format, batch.as_ref(), &p, issues);
    let auth = s.auth.as_ref().and_then(|a| auth::build(a, s.allow_http.unwrap_or(false), &p, issues));
    if auth.is_some() && headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
        issues.push(p.key("auth"), "auth and an Authorization header both say how to authenticate; keep one");
    }
    let ordering = opt(
        issues,
        p.key("ordering"),
        s.ordering.as_ref(),
        |o| match o {
            "parallel" => Ok(Ordering::Parallel),
            "fifo" => Ok(Ordering::Fifo),
            o => Err(format!("`{o}` is not parallel or fifo")),
        },
        Ordering::Parallel,
    );
    let max_in_flight =
        count(issues, p.key("max_in_flight"), s.max_in_flight, range::SUBSCRIPTION_IN_FLIGHT, 8) as usize;
    let rate_limit = s.rate_limit.as_ref().and_then(|r| issues.take(p.key("rate_limit"), range::parse_rate(r)));
    let routing_key = s.routing_key.clone().map(Secret::new);
    let api_key = s.api_key.clone().map(Secret::new);
    for (key, secret) in [("routing_key", &routing_key), ("api_key", &api_key)] {
        if let Some(secret) = secret {
            issues.redacted(p.key(key), secret);
        }
    }
    if format == Format::Pagerduty && routing_key.is_none() {
        issues.push(p.key("routing_key"), "format = \"pagerduty\" needs routing_key (the integration key)");
    }
    if format == Format::Datadog && api_key.is_none() {
        issues.push(p.key("api_key"), "format = \"datadog\" needs api_key");
    }
    let url = url?;
    Some(Subscription {
        url: without_credentials(&url),
        url_full: FullUrl(url),
        events,
        secrets,
        keys: SigningKeys(keys),
        signature,
        clock_policy,
        header_prefix,
        format,
        retry,
        method,
        headers,
        ordering,
        max_in_flight,
        rate_limit,
        timeout: opt(
            issues,
            p.key("timeout"),
            s.timeout.as_ref(),
            duration_in(range::TIMEOUT),
            Duration::from_secs(15),
        ),
        connect_timeout: opt(
            issues,
            p.key("connect_timeout"),
            s.connect_timeout.as_ref(),
            duration_in(range::CONNECT_TIMEOUT),
            Duration::from_secs(5),
        ),
        max_age: opt(
            issues,
            p.key("max_age"),
            s.max_age.as_ref(),
            duration_in(range::AGE),
            Duration::from_secs(72 * 3600),
        ),
        allow_http,
        ca_file: s.ca_file.as_ref().map(PathBuf::from),
        client_cert,
        client_key,
        compression,
        batch,
        max_rate,
        daily_budget,
        metered,
        summary: s.summary.clone(),
        enabled: s.enabled.unwrap_or(true),
        routing_key,
        api_key,
        proxy: s.proxy.as_ref().and_then(|x| issues.take(p.key("proxy"), parse_proxy(x))),
        no_proxy: None,
        auth,
        name: s.name,
    })
}

/// `client_cert` and `client_key`: both or neither.
pub(super) fn client_identity(
    cert: &Option<String>,
    key: &Option<String>,
    p: &KeyPath,
    issues: &mut Issues,
) -> (Option<PathBuf>, Option<PathBuf>) {
    match (cert, key) {
        (Some(c), Some(k)) => (Some(PathBuf::from(c)), Some(PathBuf::from(k))),
        (Some(_), None) => {
            issues.push(p.key("client_key"), "client_cert is set but client_key is not: set both (PEM files)");
            (None, None)
        }
        (None, Some(_)) => {
            issues.push(p.key("client_cert"), "client_key is set but client_cert is not: set both (PEM files)");
            (None, None)
        }
        (None, None) => (None, None),
    }
}

fn subscription_url(url: &str, allow_http: bool, p: &KeyPath, issues: &mut Issues) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && allow_http => Some(u),
        Ok(u) if u.scheme() == "http" => {
            issues.push(p.key("url"), "http:// sends events unencrypted; use https:// or set allow_http = true");
            None
        }
        Ok(u) => {
            issues.push(p.key("url"), format!("scheme `{}` is not https:// (or http:// with allow_http)", u.scheme()));
            None
        }
        Err(e) => {
            issues.push(p.key("url"), format!("`{url}` is not a URL: {e}"));
            None
        }
    }
}

/// The subscription's secrets from all their sources, and the signing keys they stand for.
fn subscription_secrets(
    s: &mut RawSubscription,
    signature: Scheme,
    p: &KeyPath,
    issues: &mut Issues,
) -> (Secrets, Vec<Vec<u8>>) {
    let mut secrets = Vec::new();
    let sources: [(&str, Option<OneOrMany>, SecretSource); 4] = [
        ("secret", s.secret.take(), SecretSource::Inline),
        ("secret_file", s.secret_file.take(), SecretSource::File),
        ("secret_env", s.secret_env.take(), SecretSource::Env),
        ("secret_credential", s.secret_credential.take(), SecretSource::Credential),
    ];
    for (key, value, source) in sources {
        for v in value.map(OneOrMany::into_vec).unwrap_or_default() {
            if let Some(sec) = issues.take(p.key(key), secret::load(source, &v)) {
                secrets.push((key, sec));
            }
        }
    }
    let mut keys = Vec::new();
    let enabled = s.enabled.unwrap_or(true);
    for (key, sec) in &secrets {
        if issues.redacted(p.key(key), sec) {
            continue;
        }
        if enabled && sec.expose() == super::super::secret::EXAMPLE {
            issues.refused_by_run(p.key(key), super::super::secret::EXAMPLE_REFUSED);
        }
        match crate::sign::signing_key(signature, sec.expose()) {
            Ok(k) => keys.push(k),
            Err(e) => issues.push(p.key(key), format!("{e} (signature = \"{signature:?}\")").to_lowercase()),
        }
    }
    if signature != Scheme::None && secrets.is_empty() {
        issues.push(
            p.key("secret"),
            "a signing secret is required (secret, secret_file, secret_env or secret_credential; `fleethook secret` makes one), or set signature = \"none\"",
        );
    }

    (Secrets(secrets.into_iter().map(|(_, s)| s).collect()), keys)
}

/// Custom headers; ones whose name looks like a credential are kept as secrets.
fn subscription_headers(raw: toml::Table, p: &KeyPath, issues: &mut Issues) -> Vec<(String, HeaderValue)> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let hp = p.key("headers").key(&name);
        let Some(value) = value.as_str() else {
            issues.push(hp, "header values are strings");
            continue;
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
            issues.push(hp, "not a valid HTTP header");
            continue;
        }
        let v = if looks_secret(&name) {
            let secret = Secret::new(value);
            issues.redacted(hp, &secret);
            HeaderValue::Secret(secret)
        } else {
            HeaderValue::Plain(value.to_string())
        };
        headers.push((name, v));
    }
    headers
}

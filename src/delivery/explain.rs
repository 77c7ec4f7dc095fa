//! What went wrong with a request that got no answer, sorted into the rule table's kinds
//! and said in one line an operator can act on. Used by the attempt's client and by the
//! OAuth2 token source alike.

use std::error::Error as _;

use super::outcome::TransportError;

/// Sorts a reqwest error into the rule table's kinds by walking its sources.
pub fn transport_error(e: &reqwest::Error) -> TransportError {
    let mut source = e.source();
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return TransportError::Tls;
        }
        source = s.source();
    }
    let text = describe(e).to_ascii_lowercase();
    if text.contains("certificate") || text.contains("tls") {
        return TransportError::Tls;
    }
    if e.is_connect() {
        if e.is_timeout() || text.contains("timed out") {
            return TransportError::ConnectTimeout;
        }
        if text.contains("dns error") || text.contains("failed to lookup") {
            return TransportError::Dns;
        }
        return TransportError::Connect;
    }
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    TransportError::Other
}

/// [`describe`], led by what to do when it is a certificate problem. `ca_file` says
/// whether the subscription sets one: the advice must not blame a file that is not set.
pub fn explain(e: &reqwest::Error, ca_file: bool) -> String {
    let text = describe(e);
    match tls_advice(&text, ca_file) {
        Some(advice) => format!("{advice} [{text}]"),
        None => text,
    }
}

/// The error in one line, its root cause first (`operation timed out`, `Connection
/// refused`), then the layers around it, without the URL (the subscription names it): a
/// table cut at its width still shows why.
pub fn describe(e: &reqwest::Error) -> String {
    let mut layers = vec![without_url(&e.to_string())];
    let mut source = e.source();
    while let Some(s) = source {
        layers.push(s.to_string());
        source = s.source();
    }
    layers.dedup();
    let root = layers.pop().unwrap_or_default();
    if layers.is_empty() {
        root
    } else {
        layers.reverse();
        format!("{root} ({})", layers.join(": "))
    }
}

/// rustls names certificate problems in its own terms, by variant (`UnknownIssuer`) or in
/// a sentence (`certificate not valid for name …`); an operator needs what is wrong and
/// what to do. Markers are matched in order, so the longer names come first.
fn tls_advice(text: &str, ca_file: bool) -> Option<&'static str> {
    let unknown_issuer = if ca_file {
        "TLS: the endpoint's certificate is not signed by a CA in the subscription's ca_file or the system's; \
         ca_file must hold the CA that signed it (or the endpoint's own self-signed certificate)"
    } else {
        "TLS: the endpoint's certificate is not signed by a CA this agent trusts; set the subscription's \
         ca_file to that CA's PEM (or to the endpoint's own self-signed certificate)"
    };
    let bad_signature = if ca_file {
        "TLS: the endpoint's certificate does not verify against the subscription's ca_file; ca_file must \
         hold the CA that signed it"
    } else {
        "TLS: the endpoint's certificate does not verify against the CA it names as its issuer (a bad \
         signature); reissue it, or set the subscription's ca_file to the CA that really signed it"
    };
    let advice: [(&str, &str); 10] = [
        (
            "CertificateRequired",
            "TLS: the endpoint requires a client certificate; set the subscription's client_cert and client_key",
        ),
        (
            "CaUsedAsEndEntity",
            "TLS: the endpoint presents a CA certificate as its own (what `openssl req -x509` makes by default); \
             give the endpoint a certificate signed by that CA, and put the CA in the subscription's ca_file",
        ),
        ("UnknownIssuer", unknown_issuer),
        ("BadSignature", bad_signature),
        (
            "NotValidForName",
            "TLS: the endpoint's certificate is not valid for the URL's host name; use the name it was issued \
             for, or reissue it",
        ),
        (
            "not valid for name",
            "TLS: the endpoint's certificate is not valid for the URL's host name; use the name it was issued \
             for, or reissue it",
        ),
        (
            "NotValidYet",
            "TLS: the endpoint's certificate is not valid yet, or the robot's clock is wrong (see `fleethook status`)",
        ),
        (
            "certificate not valid yet",
            "TLS: the endpoint's certificate is not valid yet, or the robot's clock is wrong (see `fleethook status`)",
        ),
        (
            "Expired",
            "TLS: the endpoint's certificate has expired, or the robot's clock is wrong (see `fleethook status`)",
        ),
        (
            "certificate expired",
            "TLS: the endpoint's certificate has expired, or the robot's clock is wrong (see `fleethook status`)",
        ),
    ];
    advice.iter().find(|(marker, _)| text.contains(marker)).map(|(_, advice)| *advice)
}

/// reqwest's "error sending request for url (…)" without the URL.
fn without_url(text: &str) -> String {
    match text.find(" for url (") {
        Some(i) => {
            let rest = &text[i..];
            let end = rest.rfind(')').map_or(text.len(), |j| i + j + 1);
            format!("{}{}", &text[..i], &text[end..])
        }
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::tls_advice;

    #[test]
    fn the_url_leaves_the_error_text() {
        assert_eq!(super::without_url("error sending request for url (http://x/a?b=(c))"), "error sending request");
        assert_eq!(super::without_url("error sending request for url (http://x/a)"), "error sending request");
        assert_eq!(super::without_url("builder error"), "builder error");
    }

    #[test]
    fn certificate_problems_say_what_to_do() {
        let said = |t: &str, ca_file: bool| tls_advice(t, ca_file).unwrap_or_default();
        assert!(said("invalid peer certificate: UnknownIssuer", false).contains("set the subscription's ca_file"));
        assert!(said("invalid peer certificate: UnknownIssuer", true).contains("in the subscription's ca_file"));
        assert!(said("invalid peer certificate: CaUsedAsEndEntity", false).contains("openssl req -x509"));
        assert!(said("invalid peer certificate: Expired", false).contains("clock"));
        assert_eq!(tls_advice("Connection refused (os error 111)", false), None);
    }

    #[test]
    fn a_bad_signature_blames_ca_file_only_when_it_is_set() {
        let without = tls_advice("invalid peer certificate: BadSignature", false).unwrap();
        assert!(!without.contains("against the subscription's ca_file"), "{without}");
        let with = tls_advice("invalid peer certificate: BadSignature", true).unwrap();
        assert!(with.contains("against the subscription's ca_file"), "{with}");
    }

    #[test]
    fn rustls_sentences_get_the_same_words_as_its_variant_names() {
        // rustls 0.23 writes the *Context variants as sentences, not their names.
        let name = "invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only \
                    valid for DnsName(\"localhost\")";
        assert!(tls_advice(name, true).unwrap().contains("not valid for the URL's host name"));
        let expired = "invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate \
                       is not valid after 0 (1 seconds ago)";
        assert!(tls_advice(expired, false).unwrap().contains("has expired"));
        let early = "invalid peer certificate: certificate not valid yet: verification time 0 (UNIX)";
        assert!(tls_advice(early, false).unwrap().contains("not valid yet"));
    }
}

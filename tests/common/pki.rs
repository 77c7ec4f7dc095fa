//! A private CA for TLS tests, made with rcgen: it issues server and client certificates
//! and builds servers that require a client certificate (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

/// Where [`Pki::write`] put a certificate, its key and the CA.
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        fleethook::init_crypto();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "fleethook test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki { ca_pem: cert.pem(), ca_der: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for `names` (server names, or a client's), as PEM, and its key.
    pub fn issue(&self, names: &[&str]) -> (String, String, rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("client"));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert, key)
    }

    /// Issues a certificate for `names` and writes it, its key and the CA to `dir`.
    pub fn write(&self, dir: &Path, stem: &str, names: &[&str]) -> Files {
        let (cert, key, _, _) = self.issue(names);
        let files = Files {
            ca: dir.join(format!("{stem}-ca.pem")),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&files.ca, &self.ca_pem).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    /// A TLS server for `localhost` that requires a client certificate from this CA.
    pub fn acceptor_requiring_client_certs(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor(true)
    }

    /// A TLS server for `localhost` with a certificate from this CA; with
    /// `client_certs`, it accepts only clients with one from this CA too.
    pub fn acceptor(&self, client_certs: bool) -> tokio_rustls::TlsAcceptor {
        let (_, _, cert, key) = self.issue(&["localhost"]);
        let builder = rustls::ServerConfig::builder();
        let builder = if client_certs {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = builder.with_single_cert(vec![cert.der().clone(), self.ca_der.clone()], key).unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A TLS server for `localhost` with a self-signed leaf (not a CA certificate), and that
/// certificate's PEM: what a subscription pins by naming it as its `ca_file`.
pub fn self_signed_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    fleethook::init_crypto();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert.der().clone()], der).unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert.pem())
}

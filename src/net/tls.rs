//! The one TLS client stack: rustls on the ring provider, used by the PostgreSQL store
//! (`sslmode`) and by JWT key sets fetched from an `https://` URL.
//!
//! Trust comes from a CA file named in the configuration (PEM, for private CAs) or, without one,
//! from the system's CA store (`/etc/ssl/certs` and the like, via rustls-native-certs). How much
//! of the server's certificate is checked is a [`Verification`]: everything (the chain and the
//! host name), the chain only (libpq's `verify-ca`), or nothing (libpq's `require`: encryption
//! against passive eavesdropping, no protection against an active attacker in the middle).
//!
//! Everything here is built at config time, so a missing or unreadable CA file is a config error
//! and the connect path only uses the finished [`rustls::ClientConfig`].

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The chain up to a trusted root, and the host name (libpq's `verify-full`; https).
    Full,
    /// The chain up to a trusted root, not the name (libpq's `verify-ca`).
    ChainOnly,
    /// Nothing: any certificate is accepted (libpq's `require` and `prefer`). The handshake's own
    /// signatures are still checked, so the session is encrypted to whoever answered.
    None,
}

/// Why a TLS client configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA file {path}: {message}")]
    CaFileUnreadable { path: String, message: String },
    #[error("the CA file {path} holds no PEM certificate")]
    CaFileEmpty { path: String },
    #[error("the CA file {path} holds a certificate rustls cannot use as a root: {message}")]
    CaFileInvalid { path: String, message: String },
    #[error("no CA certificates found in the system store; name a CA file")]
    NoSystemRoots,
    #[error("cannot build the TLS verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every configuration uses: ring (aws-lc-rs, rustls' default, needs cmake
/// to build and is not compiled in).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trusted roots: every certificate of `ca_file` (PEM), or the system's store.
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read(path).map_err(|error| TlsError::CaFileUnreadable {
                path: shown.clone(),
                message: error.to_string(),
            })?;
            let mut found = 0;
            let invalid = |error: &dyn std::fmt::Display| TlsError::CaFileInvalid {
                path: shown.clone(),
                message: error.to_string(),
            };
            for certificate in CertificateDer::pem_slice_iter(&text) {
                let certificate = certificate.map_err(|error| invalid(&error))?;
                roots.add(certificate).map_err(|error| invalid(&error))?;
                found += 1;
            }
            if found == 0 {
                return Err(TlsError::CaFileEmpty { path: shown });
            }
        }
        None => {
            // Unreadable entries of the store are skipped, as every TLS client does; only a store
            // with nothing usable is an error.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration trusting `ca_file` (or the system store) and checking as much as
/// `verification` says; `alpn` is offered in the handshake.
pub fn client_config(
    ca_file: Option<&Path>,
    verification: Verification,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Verifier(error.to_string()))?;
    let mut config = match verification {
        Verification::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LenientVerifier {
                webpki: None,
                provider: provider(),
            }))
            .with_no_client_auth(),
        Verification::Full | Verification::ChainOnly => {
            let roots = Arc::new(load_roots(ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
            if verification == Verification::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(LenientVerifier {
                        webpki: Some(webpki),
                        provider: provider(),
                    }))
                    .with_no_client_auth()
            }
        }
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The two lenient checks of a server certificate: none at all (libpq's `require`, `webpki`
/// absent), or the chain only (libpq's `verify-ca`: the chain must lead to a trusted root; a name
/// mismatch is forgiven, as a private CA that issues only database certificates vouches for them
/// whatever name is used). Either way the handshake signatures are checked, so the session key is
/// shared with the holder of the presented certificate's private key.
#[derive(Debug)]
struct LenientVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_problems_are_named() {
        let dir = std::env::temp_dir().join(format!("auditgate-tls-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.pem");
        let error = load_roots(Some(&missing)).expect_err("missing");
        assert!(
            error.to_string().starts_with("cannot read the CA file"),
            "{error}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = load_roots(Some(&empty)).expect_err("empty");
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert!(load_roots(Some(&garbage)).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unverified_configs_need_no_roots() {
        let config = client_config(
            Some(Path::new("/nonexistent/ca.pem")),
            Verification::None,
            &[b"postgresql"],
        )
        .expect("no roots are read without verification");
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
    }
}

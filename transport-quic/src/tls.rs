//! Certificates and keys: PEM parsing and a self-signed pair for demos and tests.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that could not be generated or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen failed to generate a certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM text without a certificate, or a malformed one.
    #[error("cannot read certificates from {what}: {reason}")]
    Certificates {
        /// Where the PEM came from.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// PEM text without a private key, or a malformed one.
    #[error("cannot read a private key from {what}: {reason}")]
    Key {
        /// Where the PEM came from.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Generates a self-signed certificate valid for `names` (DNS names or IP addresses),
/// returning `(cert_pem, key_pem)`. For demos and tests; a deployment uses its own CA.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.pem(), key_pair.serialize_pem()))
}

/// Parses every certificate in PEM text (`what` names the source in errors).
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificates {
            what: what.to_string(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in PEM text.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Key {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Reads a file whole (certificates and keys are small).
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The ring crypto provider, installed explicitly in every configuration built here
/// (no process-wide default, no aws-lc).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_parses_back() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert_eq!(certs_from_pem(cert.as_bytes(), "cert").unwrap().len(), 1);
        key_from_pem(key.as_bytes(), "key").unwrap();
        let err = certs_from_pem(key.as_bytes(), "key.pem").unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(key_from_pem(b"garbage", "k").is_err());
    }
}

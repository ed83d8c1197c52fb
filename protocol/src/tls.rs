//! What both ends of a TLS link share: reading PEM certificates and keys,
//! the crypto provider, and [`TlsError`], why a TLS setup failed.
//!
//! The frontend builds its acceptor and the backend its connector from
//! these; neither parses PEM on its own.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use tokio_rustls::rustls;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PEM held no certificate.
    #[error("no certificate in the PEM data")]
    NoCertificate,
    /// The PEM held no private key.
    #[error("no private key in the PEM data")]
    NoKey,
    /// The PEM was malformed.
    #[error("malformed PEM")]
    Pem(#[source] std::io::Error),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused a certificate or key.
    #[error("invalid certificate or key")]
    Rustls(#[from] rustls::Error),
}

/// Reads a PEM file whole.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in `pem`, in order; at least one.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(TlsError::Pem)?
        .ok_or(TlsError::NoKey)
}

/// The crypto provider both ends use (ring), so a process never depends on
/// which provider happens to be installed as the default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_garbage_pem_is_a_typed_error() {
        assert!(matches!(certs_from_pem(b""), Err(TlsError::NoCertificate)));
        assert!(matches!(key_from_pem(b"not pem"), Err(TlsError::NoKey)));
        let missing = read_pem(Path::new("no/such/file.pem"));
        assert!(matches!(missing, Err(TlsError::Read { .. })));
    }
}

//! TLS for the cluster RPC listener and the client gateway (`wss` and TLS
//! over raw TCP), with rustls.

use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

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
    /// rustls refused the certificate or key.
    #[error("invalid certificate or key")]
    Rustls(#[from] rustls::Error),
}

/// A server certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// From a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_chain[..])
            .collect::<Result<_, _>>()
            .map_err(TlsError::Pem)?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
            .map_err(TlsError::Pem)?
            .ok_or(TlsError::NoKey)?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// From PEM files (certificate chain, private key).
    pub fn from_files(cert_chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Self::from_pem(&read(cert_chain)?, &read(key)?)
    }

    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

//! TLS for the connections a backend dials to frontends.

use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

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
    #[error("no CA certificate in the PEM data")]
    NoCertificate,
    /// The PEM was malformed.
    #[error("malformed PEM")]
    Pem(#[source] std::io::Error),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused a certificate.
    #[error("invalid certificate")]
    Rustls(#[from] rustls::Error),
}

/// Which certificate authorities to trust, and the name frontends'
/// certificates must carry.
#[derive(Clone)]
pub struct LinkTls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl LinkTls {
    /// Trusts the CA certificates in `ca_pem`; frontends must present a
    /// certificate for `server_name` (a DNS name or an IP address).
    pub fn from_ca_pem(ca_pem: &[u8], server_name: &str) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut any = false;
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            roots.add(cert.map_err(TlsError::Pem)?)?;
            any = true;
        }
        if !any {
            return Err(TlsError::NoCertificate);
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(LinkTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the TLS handshake on a connected stream.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }

    /// Like [`from_ca_pem`](Self::from_ca_pem), from a file.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<Self, TlsError> {
        let pem = std::fs::read(ca).map_err(|source| TlsError::Read {
            path: ca.display().to_string(),
            source,
        })?;
        Self::from_ca_pem(&pem, server_name)
    }
}

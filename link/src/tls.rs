//! TLS for the connections dialled to a frontend: a backend's links, and
//! clients (`session-proxy-client`) that connect over TLS.

use session_proxy_protocol::tls::{certs_from_pem, provider, read_pem, TlsError};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Which certificate authorities to trust, and the name frontends'
/// certificates must carry.
#[derive(Clone)]
pub struct LinkTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
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
        for cert in certs_from_pem(ca_pem)? {
            roots.add(cert)?;
        }
        let config = ClientConfig::builder_with_provider(provider())
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
        Self::from_ca_pem(&read_pem(ca)?, server_name)
    }
}

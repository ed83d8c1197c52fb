//! Opening a link: TCP connect, optional TLS, and the hello exchange (with
//! the cluster secret's challenge–response when one is configured). An
//! `inproc://` address opens an in-memory pipe to a frontend of this process
//! instead of the TCP connect and TLS; the hello and all after are the same.

use crate::error::LinkError;
use crate::BackendConfig;
use futures::{SinkExt, StreamExt};
use session_proxy_link::inproc::{self, DirectBackend};
use session_proxy_protocol::auth::NONCE_LEN;
use session_proxy_protocol::{
    BackendCodec, ClockOffset, Hello, HelloReply, Message, Role, PROTOCOL_VERSION,
};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite};

/// The read half of a link, plain or TLS.
pub(super) type Reader = FramedRead<Box<dyn tokio::io::AsyncRead + Send + Unpin>, BackendCodec>;
/// The write half of a link, plain or TLS.
pub(super) type Writer = FramedWrite<Box<dyn tokio::io::AsyncWrite + Send + Unpin>, BackendCodec>;

/// An open link: its halves, and how far the frontend's clock is ahead.
pub(super) type Opened = (Reader, Writer, ClockOffset);

/// Dials `addr` and runs the handshake with frontend `frontend_id`; an
/// in-process frontend is offered `direct`, if any, to call for the
/// requests it forwards.
pub(super) async fn dial(
    frontend_id: &str,
    addr: &str,
    config: &BackendConfig,
    direct: Option<Arc<dyn DirectBackend>>,
) -> Result<Opened, LinkError> {
    let (r, w) = if inproc::is_in_process(addr) {
        let pipe = match direct {
            Some(direct) => inproc::connect_direct(addr, direct),
            None => inproc::connect(addr),
        };
        let pipe = pipe.map_err(|e| LinkError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e),
        })?;
        let (r, w) = tokio::io::split(pipe);
        let halves: Halves = (Box::new(r), Box::new(w));
        halves
    } else {
        connect_tcp(addr, config).await?
    };
    let codec = BackendCodec::new(config.max_frame);
    let mut reader = FramedRead::new(r, codec.clone());
    let mut writer = FramedWrite::new(w, codec);
    match timeout(
        config.handshake_timeout,
        hello(&mut reader, &mut writer, frontend_id, config),
    )
    .await
    {
        Err(_) => Err(LinkError::HandshakeTimeout),
        Ok(Err(cause)) => Err(cause),
        Ok(Ok(offset)) => Ok((reader, writer, offset)),
    }
}

/// TCP connect within the connect timeout, then TLS if configured.
async fn connect_tcp(addr: &str, config: &BackendConfig) -> Result<Halves, LinkError> {
    let stream = match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(LinkError::ConnectTimeout {
                addr: addr.to_string(),
            })
        }
        Ok(Err(source)) => {
            return Err(LinkError::Connect {
                addr: addr.to_string(),
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    // Latency over batching: the writer batches frames itself.
    let _ = stream.set_nodelay(true);
    split(stream, addr, config).await
}

type Halves = (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
);

#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
async fn split(stream: TcpStream, addr: &str, config: &BackendConfig) -> Result<Halves, LinkError> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        let connect = tls.connect(stream);
        let stream = match timeout(config.handshake_timeout, connect).await {
            Err(_) => return Err(LinkError::HandshakeTimeout),
            Ok(Err(source)) => {
                return Err(LinkError::Tls {
                    addr: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let (r, w) = tokio::io::split(stream);
        return Ok((Box::new(r), Box::new(w)));
    }
    let (r, w) = stream.into_split();
    Ok((Box::new(r), Box::new(w)))
}

/// Sends the hello and checks the answer: the frontend's proof when it
/// challenges, its version and its node id.
async fn hello(
    reader: &mut Reader,
    writer: &mut Writer,
    frontend_id: &str,
    config: &BackendConfig,
) -> Result<ClockOffset, LinkError> {
    let mut hello = Hello::new(
        config.node_id.clone(),
        Role::Backend,
        Some(frontend_id.to_string()),
    );
    hello.server_type = config.server_type.clone();
    let mut nonce = Vec::new();
    if config.secret.is_some() {
        nonce = vec![0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        hello.nonce = nonce.clone();
    }
    let send = |what| move |source| LinkError::Send { what, source };
    // Our clock when we sent what the frontend's clock reading answers.
    let mut asked_ms = session_proxy_protocol::unix_ms();
    writer
        .send(Message::Hello(hello))
        .await
        .map_err(send("the hello"))?;
    let mut reply = reader.next().await;
    if let Some(Ok(Message::HelloReply(HelloReply::Challenge {
        nonce: theirs,
        proof,
    }))) = &reply
    {
        let Some(secret) = &config.secret else {
            return Err(LinkError::SecretRequired);
        };
        if !secret.verify_server(proof, &nonce, theirs, frontend_id) {
            return Err(LinkError::FrontendUnauthenticated);
        }
        let mine = secret.client_proof(theirs, &nonce, &config.node_id);
        asked_ms = session_proxy_protocol::unix_ms();
        writer
            .send(Message::Proof(mine))
            .await
            .map_err(send("the proof"))?;
        reply = reader.next().await;
    } else if config.secret.is_some()
        && matches!(
            reply,
            Some(Ok(Message::HelloReply(HelloReply::Accepted { .. })))
        )
    {
        // Without the challenge the frontend proved nothing: it may be
        // anyone listening on that address.
        return Err(LinkError::FrontendDidNotAuthenticate);
    }
    match reply {
        None => Err(LinkError::Closed),
        Some(Err(err)) => Err(LinkError::Corrupt(err)),
        Some(Ok(Message::HelloReply(HelloReply::Accepted {
            version,
            node_id,
            clock_ms,
        }))) => {
            if version != PROTOCOL_VERSION {
                Err(LinkError::Version(version))
            } else if node_id != frontend_id {
                Err(LinkError::WrongFrontend {
                    expected: frontend_id.to_string(),
                    reached: node_id,
                })
            } else {
                Ok(ClockOffset::answered(clock_ms, asked_ms))
            }
        }
        Some(Ok(Message::HelloReply(HelloReply::Refused(err)))) => Err(LinkError::Refused(err)),
        Some(Ok(_)) => Err(LinkError::Protocol(
            "not a hello reply during the handshake",
        )),
    }
}

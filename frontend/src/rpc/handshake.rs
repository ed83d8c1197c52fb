//! The hello of a backend connection: its checks (magic, version, role,
//! the frontend it meant to reach) and, with a cluster secret, the HMAC
//! challenge–response both ways.
//!
//! Everything here happens before the peer is known: the frames are small
//! (`RpcConfig::hello_max_frame`), the whole exchange has one deadline, and
//! each refusal is logged once, rate-limited, with the peer's strings made
//! safe ([`log_safe`]).

use super::BackendConn;
use crate::logs::warn_throttled;
use futures::{SinkExt, StreamExt};
use session_proxy_protocol::auth::NONCE_LEN;
use session_proxy_protocol::text::log_safe;
use session_proxy_protocol::{
    CodecError, ErrorCode, FrontendCodec, Hello, HelloReply, Message, RpcError, Secret,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Framed;
use tracing::debug;

/// The handshake did not let the peer in; it was logged and, where the peer
/// can still hear, answered.
pub(super) struct Refused;

impl BackendConn {
    /// Reads the hello, checks it, and runs the challenge–response when a
    /// secret is set, all before `deadline`. A refused hello is answered
    /// here; an accepted one is returned unanswered, for
    /// [`accept`](Self::accept) once the backend is registered.
    pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, FrontendCodec>,
        deadline: Instant,
    ) -> Result<Hello, Refused> {
        let peer = self.peer;
        let first = tokio::select! {
            _ = self.cancel.cancelled() => {
                debug!(%peer, "shutting down during a handshake");
                return Err(Refused);
            }
            first = timeout_at(deadline, framed.next()) => first,
        };
        let hello: Hello = match first {
            Ok(Some(Ok(Message::Hello(hello)))) => hello,
            Err(_) => {
                warn_throttled!(%peer, "no hello before the handshake deadline");
                return Err(Refused);
            }
            Ok(None) => {
                debug!(%peer, "closed before the hello");
                return Err(Refused);
            }
            Ok(Some(Err(err))) => {
                warn_throttled!(%peer, cause = %session_proxy_protocol::chain(&err), "unreadable hello");
                return Err(Refused);
            }
            Ok(Some(Ok(_))) => {
                warn_throttled!(%peer, "first frame is not a hello");
                return Err(Refused);
            }
        };
        let refusal = match hello.refusal(self.service.frontend_id()) {
            Some(err) => {
                warn_throttled!(%peer, node = %log_safe(&hello.node_id), reason = %err, "backend refused");
                Some(err)
            }
            None => match &self.config.secret {
                Some(secret) => self.authenticate(framed, secret, &hello, deadline).await?,
                None => None,
            },
        };
        match refusal {
            Some(err) => {
                let _ = timeout_at(
                    deadline,
                    framed.send(Message::HelloReply(HelloReply::Refused(err))),
                )
                .await;
                Err(Refused)
            }
            None => Ok(hello),
        }
    }

    /// Answers an accepted hello.
    pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, FrontendCodec>,
    ) -> Result<(), CodecError> {
        framed
            .send(Message::HelloReply(HelloReply::Accepted {
                version: PROTOCOL_VERSION,
                node_id: self.service.frontend_id().to_string(),
                clock_ms: session_proxy_protocol::unix_ms(),
            }))
            .await
    }

    /// Runs the challenge–response: `Ok(None)` when the peer proved it
    /// knows the secret, `Ok(Some(refusal))` when it did not.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, FrontendCodec>,
        secret: &Secret,
        hello: &Hello,
        deadline: Instant,
    ) -> Result<Option<RpcError>, Refused> {
        let (peer, node) = (self.peer, log_safe(&hello.node_id));
        if hello.nonce.len() != NONCE_LEN {
            warn_throttled!(%peer, %node, "peer did not authenticate (no cluster secret?)");
            return Ok(Some(RpcError::new(
                ErrorCode::Unauthorized,
                "this frontend requires the cluster secret",
            )));
        }
        let mut nonce = vec![0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let me = self.service.frontend_id();
        let challenge = HelloReply::Challenge {
            proof: secret.server_proof(&hello.nonce, &nonce, me),
            nonce: nonce.clone(),
        };
        let sent = timeout_at(deadline, framed.send(Message::HelloReply(challenge))).await;
        if !matches!(sent, Ok(Ok(()))) {
            debug!(%peer, %node, "cannot send the challenge");
            return Err(Refused);
        }
        let proof = match timeout_at(deadline, framed.next()).await {
            Ok(Some(Ok(Message::Proof(p)))) => p,
            Ok(None) => {
                debug!(%peer, %node, "closed during authentication");
                return Err(Refused);
            }
            Ok(Some(Ok(_) | Err(_))) => {
                warn_throttled!(%peer, %node, "expected a proof; closing");
                return Err(Refused);
            }
            Err(_) => {
                warn_throttled!(%peer, %node, "no proof before the handshake deadline");
                return Err(Refused);
            }
        };
        if secret.verify_client(&proof, &nonce, &hello.nonce, &hello.node_id) {
            Ok(None)
        } else {
            warn_throttled!(%peer, %node, "peer failed authentication (wrong cluster secret or a replay)");
            Ok(Some(RpcError::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            )))
        }
    }
}

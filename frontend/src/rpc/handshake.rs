//! The hello of a backend connection: its checks (magic, version, role,
//! the frontend it meant to reach) and, with a cluster secret, the HMAC
//! challenge–response both ways.

use super::link::BackendConn;
use futures::{SinkExt, StreamExt};
use session_proxy_protocol::auth::NONCE_LEN;
use session_proxy_protocol::{
    CodecError, ErrorCode, Hello, HelloReply, Message, MessageCodec, RpcError, Secret,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use tracing::warn;

impl BackendConn {
    /// Reads the hello, checks it, and runs the challenge–response when a
    /// secret is set. A refused hello is answered here; an accepted one is
    /// returned unanswered, for [`accept`](Self::accept) once the backend is
    /// registered.
    pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
    ) -> Result<Hello, String> {
        let first = tokio::select! {
            _ = self.cancel.cancelled() => return Err("shutting down".into()),
            first = tokio::time::timeout(self.config.handshake_timeout, framed.next()) => first,
        };
        let hello: Hello = match first {
            Err(_) => return Err("no hello before the handshake deadline".into()),
            Ok(None) => return Err("closed before the hello".into()),
            Ok(Some(Err(err))) => return Err(format!("unreadable hello: {err}")),
            Ok(Some(Ok(Message::Hello(hello)))) => hello,
            Ok(Some(Ok(_))) => return Err("first frame is not a hello".into()),
        };
        let mut refusal = hello.refusal(self.service.frontend_id());
        if refusal.is_none() {
            if let Some(secret) = &self.config.secret {
                refusal = self.authenticate(framed, secret, &hello).await?;
            }
        }
        match refusal {
            Some(err) => {
                framed
                    .send(Message::HelloReply(HelloReply::Refused(err.clone())))
                    .await
                    .map_err(|e| format!("cannot answer the hello: {e}"))?;
                Err(format!("{} ({})", err, hello.node_id))
            }
            None => Ok(hello),
        }
    }

    /// Answers an accepted hello.
    pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
    ) -> Result<(), CodecError> {
        framed
            .send(Message::HelloReply(HelloReply::Accepted {
                version: PROTOCOL_VERSION,
                node_id: self.service.frontend_id().to_string(),
            }))
            .await
    }

    /// Runs the challenge–response: `Ok(None)` when the peer proved it
    /// knows the secret, `Ok(Some(refusal))` when it did not.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        framed: &mut Framed<S, MessageCodec>,
        secret: &Secret,
        hello: &Hello,
    ) -> Result<Option<RpcError>, String> {
        if hello.nonce.len() != NONCE_LEN {
            warn!(peer = %self.peer, node = %hello.node_id, "peer did not authenticate (no cluster secret?)");
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
        framed
            .send(Message::HelloReply(challenge))
            .await
            .map_err(|e| format!("cannot send the challenge: {e}"))?;
        let answer = tokio::time::timeout(self.config.handshake_timeout, framed.next()).await;
        let proof = match answer {
            Ok(Some(Ok(Message::Proof(p)))) => p,
            Ok(Some(Ok(_))) => return Err("expected a proof".into()),
            Ok(Some(Err(err))) => return Err(format!("unreadable proof: {err}")),
            Ok(None) => return Err("closed during authentication".into()),
            Err(_) => return Err("no proof before the handshake deadline".into()),
        };
        if secret.verify_client(&proof, &nonce, &hello.nonce, &hello.node_id) {
            Ok(None)
        } else {
            warn!(peer = %self.peer, node = %hello.node_id, "peer failed authentication (wrong cluster secret or a replay)");
            Ok(Some(RpcError::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            )))
        }
    }
}

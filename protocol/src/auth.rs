//! Peer authentication for cluster links: a challenge–response over a
//! shared cluster secret, both ways.
//!
//! 1. dialler → `Hello { nonce: n_c }` (16 fresh random bytes)
//! 2. acceptor → `HelloReply::Challenge { nonce: n_s, proof: P_s }`
//!    with `P_s = HMAC-SHA256(secret, "sp-server" | n_c | n_s | acceptor id)`
//! 3. dialler checks `P_s` (the acceptor knows the secret), then sends
//!    `Message::Proof(P_c)`, `P_c = HMAC-SHA256(secret, "sp-client" | n_s | n_c | dialler id)`
//! 4. acceptor checks `P_c` in constant time → `Accepted`, else `Refused`.
//!
//! Both nonces are fresh per connection, so a recorded handshake replayed
//! on a new connection meets a new `n_s` and its old proof fails. The secret
//! never travels, and its `Debug` form is redacted.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Bytes in a handshake nonce.
pub const NONCE_LEN: usize = 16;

/// The shared cluster secret. Never printed: `Debug` shows `Secret(..)`.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

/// The longest an admin token may be minted to last: one that claims to
/// expire later is refused.
pub const ADMIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from bytes (at least 16 are recommended).
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Secret(Arc::from(bytes.as_ref()))
    }

    /// The secret in environment variable `var`, if set and not empty.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    }

    fn mac(&self, label: &[u8], first: &[u8], second: &[u8], node_id: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in [label, first, second, node_id.as_bytes()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The acceptor's proof.
    pub fn server_proof(
        &self,
        client_nonce: &[u8],
        server_nonce: &[u8],
        server_id: &str,
    ) -> Vec<u8> {
        self.mac(b"sp-server", client_nonce, server_nonce, server_id)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// The dialler's proof.
    pub fn client_proof(
        &self,
        server_nonce: &[u8],
        client_nonce: &[u8],
        client_id: &str,
    ) -> Vec<u8> {
        self.mac(b"sp-client", server_nonce, client_nonce, client_id)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks an acceptor's proof, in constant time.
    pub fn verify_server(
        &self,
        proof: &[u8],
        client_nonce: &[u8],
        server_nonce: &[u8],
        server_id: &str,
    ) -> bool {
        self.mac(b"sp-server", client_nonce, server_nonce, server_id)
            .verify_slice(proof)
            .is_ok()
    }

    /// The bearer token of one node's admin actions until `expires_unix`
    /// (seconds since the Unix epoch): `<expires>.<hex HMAC>` of the node's
    /// id and the expiry under the secret. Anyone with the secret can mint
    /// one; nobody without it can, and one that is captured works on that
    /// node only, and only until it expires (at most
    /// [`ADMIN_TOKEN_LIFETIME`] after it is checked).
    pub fn admin_token(&self, node_id: &str, expires_unix: u64) -> String {
        let tag = self
            .mac(b"sp-admin", &expires_unix.to_be_bytes(), b"", node_id)
            .finalize()
            .into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{expires_unix}.{hex}")
    }

    /// Checks a presented admin bearer token for node `node_id` at
    /// `now_unix` (seconds since the Unix epoch), in constant time: it must
    /// be this node's, unexpired, and expire no later than
    /// [`ADMIN_TOKEN_LIFETIME`] from now.
    pub fn verify_admin_token(&self, presented: &str, node_id: &str, now_unix: u64) -> bool {
        let Some((expires, hex)) = presented.split_once('.') else {
            return false;
        };
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        if expires < now_unix || expires > now_unix.saturating_add(ADMIN_TOKEN_LIFETIME.as_secs()) {
            return false;
        }
        let Some(bytes) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        self.mac(b"sp-admin", &expires.to_be_bytes(), b"", node_id)
            .verify_slice(&bytes)
            .is_ok()
    }

    /// Checks a dialler's proof, in constant time.
    pub fn verify_client(
        &self,
        proof: &[u8],
        server_nonce: &[u8],
        client_nonce: &[u8],
        client_id: &str,
    ) -> bool {
        self.mac(b"sp-client", server_nonce, client_nonce, client_id)
            .verify_slice(proof)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_out_only_with_the_same_secret_nonces_and_ids() {
        let s = Secret::new("correct horse battery staple");
        let (nc, ns) = ([1u8; 16], [2u8; 16]);
        let p = s.client_proof(&ns, &nc, "chat-1");
        assert!(s.verify_client(&p, &ns, &nc, "chat-1"));
        assert!(
            !s.verify_client(&p, &[3u8; 16], &nc, "chat-1"),
            "another server nonce"
        );
        assert!(!s.verify_client(&p, &ns, &nc, "chat-2"), "another node");
        assert!(
            !Secret::new("wrong").verify_client(&p, &ns, &nc, "chat-1"),
            "another secret"
        );
        let sp = s.server_proof(&nc, &ns, "f1");
        assert!(s.verify_server(&sp, &nc, &ns, "f1"));
        assert!(
            !s.verify_client(&sp, &nc, &ns, "f1"),
            "the two directions differ"
        );
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}

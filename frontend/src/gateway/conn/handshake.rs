//! The Pomelo handshake: client checks, a new or resumed session, the
//! reply with heartbeat, dictionary and resume token.

use crate::{ConnectInfo, ResumeError, SessionOwner};
use serde_json::{json, Value};
use session_proxy_protocol::client::handshake::{CODE_OK, CODE_OLD_CLIENT, CODE_USER_ERROR};
use session_proxy_protocol::client::{HandshakeRequest, PackageType};
use std::net::SocketAddr;
use tracing::debug;

use super::*;

/// A handshake that must wait before it is answered, in a stage of the
/// connection's own ([`Stop::Later`]): for the hooks, or for a resume that
/// the shared store decides (the session may be another frontend's, or
/// the copy held here stale).
pub(super) enum Later {
    /// The client check and the user hook run first.
    Hooks(HandshakeRequest),
    /// The resume is checked or looked up in the store.
    Claim(Claim),
}

/// A resume the store decides.
pub(super) struct Claim {
    token: String,
    /// The client's type and device, when the gateway checks them.
    client: Vec<(String, String)>,
    /// What the user hook answered.
    user: Option<Value>,
    held: Held,
    /// What a fresh session is opened with, if the token turns out stale.
    fresh: Fresh,
}

/// What a new session of this client is opened with.
struct Fresh {
    peer: SocketAddr,
    client_type: String,
    version: String,
    device: Option<String>,
}

/// Whether the client got the session its resume token named.
enum Resumed {
    /// Yes.
    Yes,
    /// It asked for none.
    No,
    /// Its token was stale; it got a fresh session.
    Refused(ResumeError),
}

/// What the client holds already, from its handshake's `sys`.
struct Held {
    /// The dictionary version.
    dict: Option<String>,
    /// The protos version; `None`: the client does not speak protobuf
    /// (it sent no `protoVersion` at all).
    protos: Option<String>,
}

impl Held {
    fn of(request: &HandshakeRequest) -> Held {
        let sys = request.sys.as_ref();
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        Held {
            dict: sys
                .and_then(|s| s.dict_version.as_ref())
                .and_then(Value::as_str)
                .map(str::to_string),
            protos: sys.and_then(|s| s.proto_version.as_ref()).map(text),
        }
    }
}

fn refuse(this: &mut ClientConn, code: u16, why: &str) {
    refuse_as(this, code, why, false);
}

/// Refuses the handshake; `retry`: the same handshake may work later (a
/// store that did not answer), so the reply says `"retry": true` and a
/// client keeps its resume token.
fn refuse_as(this: &mut ClientConn, code: u16, why: &str, retry: bool) {
    crate::metrics::HANDSHAKE_REFUSED.increment(1);
    let mut reply = json!({ "code": code, "error": why });
    if retry {
        reply["retry"] = json!(true);
    }
    let reply = reply.to_string();
    let _ = out_codec().encode_to(PackageType::Handshake, reply.as_bytes(), &mut this.out);
    this.closing = Some(format!("handshake refused ({code}): {why}").into());
}

/// Runs one hook: its call and its future, bounded by `within`, with a
/// panic contained. `Err` is why the client is refused.
async fn run_hook<T>(
    name: &str,
    within: std::time::Duration,
    call: impl FnOnce() -> crate::HookFuture<T>,
) -> Result<T, String> {
    use futures::FutureExt;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let outcome = match catch_unwind(AssertUnwindSafe(call)) {
        Ok(future) => tokio::time::timeout(within, AssertUnwindSafe(future).catch_unwind()).await,
        Err(panic) => Ok(Err(panic)),
    };
    match outcome {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => {
            tracing::warn!("the {name} panicked; refusing that client");
            Err(format!("{name} failed"))
        }
        Err(_) => {
            crate::logs::warn_throttled!(
                timeout_ms = within.as_millis() as u64,
                "the {name} took too long; refusing that client"
            );
            Err(format!("{name} timed out"))
        }
    }
}

impl ClientConn {
    /// Answers a handshake, or returns what it must wait for first.
    pub(super) fn on_handshake(&mut self, body: &[u8], peer: SocketAddr) -> Option<Box<Later>> {
        let Some(request) = HandshakeRequest::parse(body) else {
            refuse(self, CODE_USER_ERROR, "handshake is not JSON");
            return None;
        };
        if request.sys.is_none() {
            refuse(self, CODE_USER_ERROR, "handshake without sys");
            return None;
        }
        if self.shared.check_client.is_some() || self.shared.on_handshake.is_some() {
            return Some(Box::new(Later::Hooks(request)));
        }
        self.open(&request, None, peer)
            .map(|c| Box::new(Later::Claim(c)))
    }

    /// Finishes a handshake that had to wait.
    pub(super) async fn later(&mut self, later: Box<Later>, peer: SocketAddr) {
        match *later {
            Later::Hooks(request) => {
                let Some(user) = self.hooks(&request, peer).await else {
                    return;
                };
                if let Some(claim) = self.open(&request, user, peer) {
                    self.claim(claim).await;
                }
            }
            Later::Claim(claim) => self.claim(claim).await,
        }
    }

    /// Runs the client check and the user hook, within the hook timeout
    /// together. `None`: the client was refused.
    async fn hooks(
        &mut self,
        request: &HandshakeRequest,
        peer: SocketAddr,
    ) -> Option<Option<Value>> {
        let shared = self.shared.clone();
        let deadline = tokio::time::Instant::now() + shared.config.hook_timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(check) = &shared.check_client {
            let (client_type, version) = request.client();
            match run_hook("client check", left(), || check(client_type, version)).await {
                Ok(true) => {}
                Ok(false) => {
                    refuse(self, CODE_OLD_CLIENT, "client type or version refused");
                    return None;
                }
                Err(why) => {
                    refuse(self, CODE_USER_ERROR, &why);
                    return None;
                }
            }
        }
        let Some(hook) = &shared.on_handshake else {
            return Some(None);
        };
        match run_hook("handshake hook", left(), || hook(request.clone(), peer)).await {
            Ok(Ok(user)) => Some(user),
            Ok(Err(why)) | Err(why) => {
                refuse(self, CODE_USER_ERROR, &why);
                None
            }
        }
    }

    /// Opens the client's session, new or resumed, and answers; or returns
    /// the resume to look up in the store.
    fn open(
        &mut self,
        request: &HandshakeRequest,
        user: Option<Value>,
        peer: SocketAddr,
    ) -> Option<Claim> {
        let (client_type, version) = request.client();
        // A new session, or the one the client's resume token names.
        let resume_enabled = !self.shared.config.resume_grace.is_zero();
        let presented = request.user.get("resumeToken").and_then(Value::as_str);
        let device = request.user.get("device").and_then(Value::as_str);
        let mut client: Vec<(&str, &str)> = Vec::new();
        if self.shared.config.resume_same_client {
            client.push(("clientType", client_type.as_str()));
            client.extend(device.map(|d| ("device", d)));
        }
        let held = Held::of(request);
        let fresh = Fresh {
            peer,
            client_type: client_type.clone(),
            version,
            device: device.map(str::to_string),
        };
        match presented {
            // With a store, the store says who holds the session, even one
            // held here: another frontend may have claimed it meanwhile.
            Some(token) if resume_enabled && self.shared.sessions.has_store() => {
                let own = |(k, v): &(&str, &str)| (k.to_string(), v.to_string());
                return Some(Claim {
                    token: token.to_string(),
                    client: client.iter().map(own).collect(),
                    user,
                    held,
                    fresh,
                });
            }
            Some(token) if resume_enabled => match self.shared.sessions.resume_as(token, &client) {
                Ok((owner, next)) => self.accept(owner, Some(next), Resumed::Yes, user, held),
                Err(err) => self.resume_refused(err, fresh, user, held),
            },
            _ => self.open_fresh(fresh, None, user, held),
        }
        None
    }

    /// A resume that did not work: a stale token gets a fresh session (or,
    /// with [`GatewayConfig::strict_resume`](crate::GatewayConfig::strict_resume),
    /// code 500); a store that did not answer is refused ("try again", and
    /// `"retry": true`: the client keeps its token).
    fn resume_refused(&mut self, err: ResumeError, fresh: Fresh, user: Option<Value>, held: Held) {
        crate::metrics::RESUME_REFUSED.increment(1);
        debug!(cause = %session_proxy_protocol::chain(&err), "resume refused");
        if err.is_stale() && !self.shared.config.strict_resume {
            self.open_fresh(fresh, Some(err), user, held);
        } else {
            let why = format!("resume refused: {err}");
            refuse_as(self, CODE_USER_ERROR, &why, !err.is_stale());
        }
    }

    /// Opens a new session for the client and answers; `stale` is the
    /// resume it asked for instead, and why that did not work.
    fn open_fresh(
        &mut self,
        fresh: Fresh,
        stale: Option<ResumeError>,
        user: Option<Value>,
        held: Held,
    ) {
        let mut info = ConnectInfo::from_addr(fresh.peer);
        info.metadata
            .insert("transport".into(), self.transport.kind().into());
        info.metadata.insert("clientType".into(), fresh.client_type);
        info.metadata.insert("clientVersion".into(), fresh.version);
        if let Some(device) = fresh.device {
            info.metadata.insert("device".into(), device);
        }
        let owner = match self.shared.sessions.try_create(info) {
            Ok(owner) => owner,
            Err(err) => {
                refuse(self, CODE_USER_ERROR, &err.to_string());
                return;
            }
        };
        let token = match self.shared.config.resume_grace.is_zero() {
            true => None,
            false => self.shared.sessions.issue_token(owner.sid()).ok(),
        };
        let resumed = match stale {
            Some(err) => Resumed::Refused(err),
            None => Resumed::No,
        };
        self.accept(owner, token, resumed, user, held);
    }

    /// Resumes through the shared store (the session may have lived on
    /// another frontend, or moved there from here), then answers the
    /// handshake. Bounded by the store's call deadline.
    async fn claim(&mut self, claim: Claim) {
        let Claim {
            token,
            client,
            user,
            held,
            fresh,
        } = claim;
        let client: Vec<(&str, &str)> = client
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match self.shared.sessions.resume_anywhere(&token, &client).await {
            Ok((owner, next)) => self.accept(owner, Some(next), Resumed::Yes, user, held),
            Err(err) => self.resume_refused(err, fresh, user, held),
        }
    }

    /// Takes the session and writes the handshake reply.
    fn accept(
        &mut self,
        owner: SessionOwner,
        token: Option<String>,
        resumed: Resumed,
        user: Option<Value>,
        held: Held,
    ) {
        let refused = match &resumed {
            Resumed::Refused(err) => Some(err.to_string()),
            _ => None,
        };
        let resumed = matches!(resumed, Resumed::Yes);
        if resumed {
            crate::metrics::RESUME_OK.increment(1);
            crate::metrics::HANDSHAKE_RESUMED.increment(1);
        } else {
            crate::metrics::HANDSHAKE_NEW.increment(1);
        }
        self.owner = Some(owner);
        let mut sys_reply =
            json!({ "heartbeat": self.shared.config.heartbeat_whole_secs().as_secs() });
        if let Some(dict) = &self.shared.dictionary {
            if held.dict.as_deref() != Some(dict.version.as_str()) {
                // `dict` for Pinus's clients; libpomelo2 (C, Unity, Java,
                // Python) asserts that `routeToCode`, `codeToRoute` and
                // `dictVersion` come together, so both kinds work.
                sys_reply["dict"] = json!(dict.code_of);
                sys_reply["routeToCode"] = json!(dict.code_of);
                sys_reply["codeToRoute"] = json!(dict.route_of);
                sys_reply["dictVersion"] = json!(dict.version);
            }
            sys_reply["useDict"] = json!(true);
        }
        if let (Some(protos), Some(version)) = (&self.shared.config.protos, &held.protos) {
            // As Pomelo and Pinus: the protos unless the client holds
            // these already.
            if version != protos.version() {
                sys_reply["protos"] = protos.handshake_value();
            }
            sys_reply["useProto"] = json!(true);
        }
        let protobuf = self.shared.config.protos.is_some() && held.protos.is_some();
        let mut reply = json!({ "code": CODE_OK, "sys": sys_reply });
        let mut user = user.unwrap_or(Value::Null);
        if let Some(token) = token {
            if !user.is_object() {
                user = json!({});
            }
            user["resumeToken"] = json!(token);
            user["resumed"] = json!(resumed);
            user["resumeGrace"] = json!(self.shared.config.resume_grace.as_secs());
            if let Some(why) = refused {
                user["resumeRefused"] = json!(why);
            }
        }
        if !user.is_null() {
            reply["user"] = user;
        }
        let reply = reply.to_string();
        let _ = out_codec().encode_to(PackageType::Handshake, reply.as_bytes(), &mut self.out);
        self.state.answered(resumed, protobuf);
    }
}

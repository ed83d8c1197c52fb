//! `BackendSession`: a backend's working copy of one frontend session.

use crate::{Error, FrontendClient};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use session_proxy_protocol::calls::{Bind, Call, GetSession, KickBySid, Push, PushToSids, Unbind};
use session_proxy_protocol::{KeyWrite, Precondition, SessionId, SessionSnapshot, Setting};
use std::collections::BTreeMap;

/// One key of the local snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Local {
    /// The current local value; `None` when removed locally (a push of the key
    /// removes it on the frontend).
    value: Option<Bytes>,
    /// The frontend's version of the key when this backend last saw it;
    /// `None` when the frontend did not have the key.
    base: Option<u64>,
}

/// A proxy for a session that lives on a frontend.
///
/// It holds a snapshot: [`get`](Self::get), [`set`](Self::set) and
/// [`remove`](Self::remove) work on it locally, and nothing reaches the
/// frontend until [`push`](Self::push), [`push_all`](Self::push_all),
/// [`bind`](Self::bind) or [`unbind`](Self::unbind). Pushes are last write
/// wins per key; [`push_if_unchanged`](Self::push_if_unchanged) instead fails
/// with [`ErrorCode::Conflict`](session_proxy_protocol::ErrorCode) when the
/// key moved on the frontend since this snapshot.
///
/// Values are MessagePack: any `serde` type goes in and comes out; the
/// frontend keeps the bytes without decoding them.
#[derive(Clone, Debug)]
pub struct BackendSession {
    /// The owning frontend's client.
    client: FrontendClient,
    /// The session id.
    sid: SessionId,
    /// The uid, as of the snapshot or this proxy's own bind/unbind.
    uid: Option<String>,
    /// The settings, with the versions they were based on.
    settings: BTreeMap<String, Local>,
}

impl BackendSession {
    pub(crate) fn from_snapshot(client: FrontendClient, snapshot: SessionSnapshot) -> Self {
        BackendSession {
            client,
            sid: snapshot.sid,
            uid: snapshot.uid,
            settings: snapshot
                .settings
                .into_iter()
                .map(|(k, s)| {
                    (
                        k,
                        Local {
                            value: Some(s.value),
                            base: Some(s.version),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.sid
    }

    /// The id of the frontend that owns the session.
    pub fn frontend_id(&self) -> &str {
        self.client.frontend_id()
    }

    /// The bound uid, if any.
    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    /// Decodes a setting of the local snapshot. `Ok(None)` when the key is
    /// absent (or removed locally).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.settings.get(key).and_then(|l| l.value.as_ref()) {
            None => Ok(None),
            Some(bytes) => rmp_serde::from_slice(bytes)
                .map(Some)
                .map_err(|source| Error::Decode {
                    key: key.to_string(),
                    source,
                }),
        }
    }

    /// The raw MessagePack bytes of a setting of the local snapshot.
    pub fn get_raw(&self, key: &str) -> Option<&Bytes> {
        self.settings.get(key).and_then(|l| l.value.as_ref())
    }

    /// The frontend's version of a key as of this snapshot (`None` if the
    /// frontend did not have it).
    pub fn version(&self, key: &str) -> Option<u64> {
        self.settings.get(key).and_then(|l| l.base)
    }

    /// Sets a setting in the local snapshot. Push it to make it real.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|source| Error::Encode {
            key: key.to_string(),
            source,
        })?;
        self.set_raw(key, Bytes::from(bytes));
        Ok(())
    }

    /// Sets a setting to already encoded MessagePack bytes.
    pub fn set_raw(&mut self, key: &str, value: Bytes) {
        self.settings
            .entry(key.to_string())
            .and_modify(|l| l.value = Some(value.clone()))
            .or_insert(Local {
                value: Some(value),
                base: None,
            });
    }

    /// Removes a setting from the local snapshot. Pushing the key (or
    /// `push_all`) removes it on the frontend.
    pub fn remove(&mut self, key: &str) {
        self.settings
            .entry(key.to_string())
            .and_modify(|l| l.value = None)
            .or_insert(Local {
                value: None,
                base: None,
            });
    }

    /// The keys that have a value in the local snapshot.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.settings
            .iter()
            .filter(|(_, l)| l.value.is_some())
            .map(|(k, _)| k.as_str())
    }

    /// Binds the session to `uid` on the frontend.
    pub async fn bind(&mut self, uid: &str) -> Result<(), Error> {
        self.client
            .call(Bind {
                sid: self.sid,
                uid: uid.to_string(),
            })
            .await?;
        self.uid = Some(uid.to_string());
        Ok(())
    }

    /// Unbinds the session from `uid` on the frontend.
    pub async fn unbind(&mut self, uid: &str) -> Result<(), Error> {
        self.client
            .call(Unbind {
                sid: self.sid,
                uid: uid.to_string(),
            })
            .await?;
        self.uid = None;
        Ok(())
    }

    /// Writes one key to the frontend, last write wins. A key removed locally
    /// (or never set) is removed on the frontend.
    pub async fn push(&mut self, key: &str) -> Result<(), Error> {
        self.push_keys(&[key], false).await
    }

    /// Writes one key only if the frontend still has it at the version this
    /// snapshot saw (or still lacks it, if the snapshot did). Otherwise fails
    /// with a conflict ([`Error::code`] is `Conflict`) and changes nothing.
    pub async fn push_if_unchanged(&mut self, key: &str) -> Result<(), Error> {
        self.push_keys(&[key], true).await
    }

    /// Writes every key of the local snapshot, and removes on the frontend
    /// the keys removed locally. Keys this snapshot never had are untouched:
    /// `push_all` never deletes what it does not name.
    pub async fn push_all(&mut self) -> Result<(), Error> {
        let keys: Vec<String> = self.settings.keys().cloned().collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.push_keys(&keys, false).await
    }

    /// Like [`push_all`](Self::push_all), but all or nothing: every key must
    /// be unchanged on the frontend since this snapshot.
    pub async fn push_all_if_unchanged(&mut self) -> Result<(), Error> {
        let keys: Vec<String> = self.settings.keys().cloned().collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.push_keys(&keys, true).await
    }

    async fn push_keys(&mut self, keys: &[&str], conditional: bool) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let writes: Vec<KeyWrite> = keys
            .iter()
            .map(|key| {
                let local = self.settings.get(*key);
                let expect = match (conditional, local.and_then(|l| l.base)) {
                    (false, _) => Precondition::Any,
                    (true, Some(v)) => Precondition::Version(v),
                    (true, None) => Precondition::Absent,
                };
                KeyWrite {
                    key: (*key).to_string(),
                    value: local.and_then(|l| l.value.clone()),
                    expect,
                }
            })
            .collect();
        let versions = self
            .client
            .call(Push {
                sid: self.sid,
                writes,
            })
            .await?;
        if versions.len() != keys.len() {
            // One version per write is the reply's shape: anything else is
            // a reply this build cannot read.
            return Err(Error::BadReply {
                frontend: self.frontend_id().to_string(),
                call: Push::NAME,
                source: session_proxy_protocol::CodecError::Malformed(
                    rmp_serde::decode::Error::LengthMismatch(
                        u32::try_from(keys.len()).unwrap_or(u32::MAX),
                    ),
                ),
            });
        }
        for (key, version) in keys.iter().zip(versions) {
            match version {
                Some(v) => {
                    if let Some(local) = self.settings.get_mut(*key) {
                        local.base = Some(v);
                    }
                }
                None => {
                    self.settings.remove(*key);
                }
            }
        }
        Ok(())
    }

    /// Re-reads the session from the frontend, dropping local changes that
    /// were not pushed. Fails with `SessionNotFound` if it closed meanwhile.
    pub async fn refresh(&mut self) -> Result<(), Error> {
        match self.client.call(GetSession { sid: self.sid }).await? {
            Some(snapshot) => {
                *self = BackendSession::from_snapshot(self.client.clone(), snapshot);
                Ok(())
            }
            None => Err(self.closed()),
        }
    }

    /// Pushes `msg` (as JSON) on `route` to this session's client. Fails
    /// with `SessionNotFound` if the session has closed.
    pub async fn send<T: Serialize + ?Sized>(&self, route: &str, msg: &T) -> Result<(), Error> {
        let body = crate::service::json_body(msg)?;
        let missed = self
            .client
            .call(PushToSids {
                route: route.to_string(),
                body,
                sids: vec![self.sid],
            })
            .await?;
        if missed.is_empty() {
            Ok(())
        } else {
            Err(self.closed())
        }
    }

    /// Kicks the session's client with `reason` and closes the session.
    /// Returns whether the session was still open.
    pub async fn kick(&self, reason: &str) -> Result<bool, Error> {
        let kicked = self
            .client
            .call(KickBySid {
                sid: self.sid,
                reason: reason.to_string(),
            })
            .await?;
        Ok(kicked > 0)
    }

    /// The local snapshot as a [`SessionSnapshot`]: the keys that have a
    /// value, each with the frontend version it is based on (0 for a key
    /// the frontend has not seen yet).
    pub fn export(&self) -> SessionSnapshot {
        SessionSnapshot {
            sid: self.sid,
            frontend_id: self.frontend_id().to_string(),
            uid: self.uid.clone(),
            settings: self
                .settings
                .iter()
                .filter_map(|(k, l)| {
                    l.value.as_ref().map(|value| {
                        (
                            k.clone(),
                            Setting {
                                value: value.clone(),
                                version: l.base.unwrap_or(0),
                            },
                        )
                    })
                })
                .collect(),
        }
    }

    /// The error for a session the frontend no longer has.
    fn closed(&self) -> Error {
        Error::Remote {
            frontend: self.frontend_id().to_string(),
            source: session_proxy_protocol::RpcError::new(
                session_proxy_protocol::ErrorCode::SessionNotFound,
                "session closed",
            ),
        }
    }
}

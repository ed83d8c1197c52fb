//! The session data the calls carry: a snapshot of a session, what is
//! known about it, its settings and the writes of a push.

use crate::SessionId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One key of a [`Push`](super::Push).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrite {
    /// The setting's key.
    pub key: String,
    /// The new MessagePack-encoded value, or `None` to remove the key.
    pub value: Option<Bytes>,
    /// What the key must look like on the frontend for the write to apply.
    pub expect: Precondition,
}

/// The condition a [`KeyWrite`] puts on the frontend's current state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Write unconditionally: last write wins.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this version.
    Version(u64),
}

/// One setting as the frontend stores it: opaque MessagePack bytes and the
/// version the frontend gave the last write of the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The value, MessagePack-encoded by a backend; the frontend never decodes it.
    pub value: Bytes,
    /// Assigned by the frontend on every write; never reused within a session.
    pub version: u64,
}

/// A copy of a session's state at one moment, sent to backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The session id.
    pub sid: SessionId,
    /// The owning frontend.
    pub frontend_id: String,
    /// The bound user, if any.
    pub uid: Option<String>,
    /// The settings.
    pub settings: BTreeMap<String, Setting>,
}

/// What is known about a session beyond its settings: where and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session id.
    pub sid: SessionId,
    /// The frontend that owns it.
    pub frontend_id: String,
    /// The bound user.
    pub uid: Option<String>,
    /// Created, in ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last client activity, in ms since the Unix epoch.
    pub last_active_unix_ms: u64,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// Client type, version, device … as the client reported them.
    pub metadata: BTreeMap<String, String>,
    /// Whether its client is away (parked, waiting for a resume).
    pub parked: bool,
}

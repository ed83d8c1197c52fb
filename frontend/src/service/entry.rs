//! One session as the frontend keeps it: identity, settings with their
//! versions, limits, lifetime fields.

use super::{packed, resume, settings, tokens};
use crate::owner::OwnerTx;
use crate::{Error, SessionConfig};
use bytes::Bytes;
use session_proxy_protocol::{SessionId, SessionSnapshot, Setting};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One session as the frontend keeps it.
pub(super) struct SessionEntry {
    /// The bound user, if any; mirrored in the uid index.
    pub(super) uid: Option<String>,
    /// Settings: opaque bytes with a version each.
    pub(super) settings: settings::Settings,
    /// Keys plus values of `settings`, in bytes, kept in step by `write` and
    /// `remove_setting` (the limit check must not sum the map per push).
    pub(super) settings_bytes: usize,
    /// The last version handed out in this session; versions are never reused,
    /// so a removed and re-added key never repeats an old version.
    pub(super) last_version: u64,
    /// Where the client came from, for embedding code and operators.
    pub(super) info: packed::PackedInfo,
    /// When the session was created (wall clock, for people).
    pub(super) created_at: SystemTime,
    /// When the session was created (monotonic, for the lifetime).
    pub(super) created: Instant,
    /// Client activity, in ms since the service's epoch; an atomic so that
    /// touching a session needs only a read guard.
    pub(super) last_active: AtomicU64,
    /// This session's idle timeout (`None`: never idles out).
    pub(super) idle_timeout: Option<Duration>,
    /// This session's absolute lifetime (`None`: unlimited).
    pub(super) lifetime: Option<Duration>,
    /// Set while no connection owns the session.
    pub(super) parked: Option<resume::Parked>,
    /// Which owner handle is current; an older handle (a connection that was
    /// taken over) can no longer close or park the session.
    pub(super) owner_gen: u64,
    /// The ownership epoch the store holds this session under (0 until
    /// another frontend first claims it); writes of an older one are
    /// refused there.
    pub(super) store_epoch: u64,
    /// Hashes of the resume tokens.
    pub(super) tokens: tokens::Tokens,
    /// The queue to the connection that owns this session; closed when the
    /// entry is removed, which tells the connection the session is over.
    pub(super) owner: OwnerTx,
}

impl SessionEntry {
    pub(super) fn snapshot(&self, sid: SessionId, frontend_id: &str) -> SessionSnapshot {
        SessionSnapshot {
            sid,
            frontend_id: frontend_id.to_string(),
            uid: self.uid.clone(),
            settings: self.settings.to_map(),
        }
    }

    /// Checks that applying `changes` (key, new value length or `None` for a
    /// removal, in order) keeps the settings within the configured limits.
    pub(super) fn check_limits<'a>(
        &self,
        config: &SessionConfig,
        changes: impl IntoIterator<Item = (&'a str, Option<usize>)>,
    ) -> Result<(), Error> {
        let mut count = self.settings.len();
        let mut bytes = self.settings_bytes;
        // Keys this batch already changed (pushes name a few keys: a short
        // list beats a hash map, and a one-key push allocates nothing).
        let mut touched: Vec<(&str, Option<usize>)> = Vec::new();
        for (key, new_len) in changes {
            let old = match touched.iter().rev().find(|(k, _)| *k == key) {
                Some((_, v)) => *v,
                None => self.settings.get(key).map(|s| key.len() + s.value.len()),
            };
            let new = new_len.map(|l| key.len() + l);
            match (old, new) {
                (None, Some(n)) => {
                    count += 1;
                    bytes += n;
                }
                (Some(o), Some(n)) => bytes = bytes - o + n,
                (Some(o), None) => {
                    count -= 1;
                    bytes -= o;
                }
                (None, None) => {}
            }
            touched.push((key, new));
        }
        if count > config.max_settings {
            return Err(Error::LimitExceeded {
                what: "settings per session",
                limit: config.max_settings,
            });
        }
        if bytes > config.max_settings_bytes {
            return Err(Error::LimitExceeded {
                what: "bytes of settings per session",
                limit: config.max_settings_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn write(&mut self, key: String, value: Bytes) -> u64 {
        self.last_version += 1;
        let version = self.last_version;
        let added = key.len() + value.len();
        let key_len = key.len();
        if let Some(old) = self.settings.insert(key, Setting { value, version }) {
            self.settings_bytes -= key_len + old.value.len();
        }
        self.settings_bytes += added;
        version
    }

    pub(super) fn remove_setting(&mut self, key: &str) -> bool {
        match self.settings.remove(key) {
            Some(old) => {
                self.settings_bytes -= key.len() + old.value.len();
                true
            }
            None => false,
        }
    }
}

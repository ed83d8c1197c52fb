//! Writes to a session's settings: set, import, remove, and a backend's
//! all-or-nothing push with its preconditions.
use crate::Error;
use bytes::Bytes;
use session_proxy_protocol::{KeyWrite, Precondition, SessionId};

use super::SessionService;

impl SessionService {
    /// Sets one key unconditionally; returns its new version.
    pub fn set(&self, sid: SessionId, key: &str, value: Bytes) -> Result<u64, Error> {
        let mut entry = self.entry_mut(sid)?;
        entry.check_limits(&self.inner.config, [(key, Some(value.len()))])?;
        let version = entry.write(key.to_string(), value);
        drop(entry);
        self.mark_dirty(sid);
        Ok(version)
    }

    /// Sets several keys unconditionally; returns their new versions in order.
    pub fn import(
        &self,
        sid: SessionId,
        values: impl IntoIterator<Item = (String, Bytes)>,
    ) -> Result<Vec<u64>, Error> {
        let mut entry = self.entry_mut(sid)?;
        let values: Vec<(String, Bytes)> = values.into_iter().collect();
        entry.check_limits(
            &self.inner.config,
            values.iter().map(|(k, v)| (k.as_str(), Some(v.len()))),
        )?;
        let versions = values.into_iter().map(|(k, v)| entry.write(k, v)).collect();
        drop(entry);
        self.mark_dirty(sid);
        Ok(versions)
    }

    /// Removes one key; returns whether it existed.
    pub fn remove_key(&self, sid: SessionId, key: &str) -> Result<bool, Error> {
        let mut entry = self.entry_mut(sid)?;
        let existed = entry.remove_setting(key);
        drop(entry);
        self.mark_dirty(sid);
        Ok(existed)
    }

    /// Applies a backend's push: all writes or none.
    ///
    /// Every precondition is checked against the state before the push; if
    /// one fails, nothing changes and [`Error::Conflict`] names the key. Keys
    /// the push does not name are never touched. Returns the new version of
    /// each write (`None` for a removal).
    pub fn apply_push(
        &self,
        sid: SessionId,
        writes: Vec<KeyWrite>,
    ) -> Result<Vec<Option<u64>>, Error> {
        let mut entry = self.entry_mut(sid)?;
        for w in &writes {
            let current = entry.settings.get(&w.key).map(|s| s.version);
            let ok = match w.expect {
                Precondition::Any => true,
                Precondition::Absent => current.is_none(),
                Precondition::Version(v) => current == Some(v),
            };
            if !ok {
                return Err(Error::Conflict {
                    key: w.key.clone(),
                    expected: describe_expect(w.expect),
                    found: current.map_or_else(|| "absent".into(), |v| format!("version {v}")),
                });
            }
        }
        entry.check_limits(
            &self.inner.config,
            writes
                .iter()
                .map(|w| (w.key.as_str(), w.value.as_ref().map(Bytes::len))),
        )?;
        let versions = writes
            .into_iter()
            .map(|w| match w.value {
                Some(value) => Some(entry.write(w.key, value)),
                None => {
                    entry.remove_setting(&w.key);
                    None
                }
            })
            .collect();
        drop(entry);
        self.mark_dirty(sid);
        Ok(versions)
    }
}

pub(super) fn describe_expect(expect: Precondition) -> String {
    match expect {
        Precondition::Any => "anything".into(),
        Precondition::Absent => "absent".into(),
        Precondition::Version(v) => format!("version {v}"),
    }
}

//! A session's settings: a vector of `(key, setting)` sorted by key.
//!
//! Sessions hold a handful of keys. A `BTreeMap` allocates a whole node
//! (room for eleven entries, about 720 bytes here) for the first key, and
//! reaching a key goes through it; a sorted vector holds exactly its
//! entries in one allocation and finds a key by binary search.

use session_proxy_protocol::Setting;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Settings(Vec<(String, Setting)>);

impl Settings {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn get(&self, key: &str) -> Option<&Setting> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key`; returns the setting it replaced.
    pub(super) fn insert(&mut self, key: String, setting: Setting) -> Option<Setting> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, setting)),
            Err(i) => {
                if self.0.len() < 4 {
                    // Most sessions stop at a few keys: no spare room.
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (key, setting));
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Setting> {
        let i = self.find(key).ok()?;
        let (_, old) = self.0.remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(old)
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Setting)> {
        self.0.iter().map(|(k, s)| (k, s))
    }

    /// A copy as the wire types carry it.
    pub(super) fn to_map(&self) -> BTreeMap<String, Setting> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<String, Setting>> for Settings {
    fn from(map: BTreeMap<String, Setting>) -> Self {
        // A BTreeMap iterates in key order: already sorted.
        Settings(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn setting(v: &'static [u8], version: u64) -> Setting {
        Setting {
            value: Bytes::from_static(v),
            version,
        }
    }

    #[test]
    fn behaves_like_a_sorted_map() {
        let mut s = Settings::default();
        let mut model = BTreeMap::new();
        let keys = ["room", "a", "zeta", "m", "room", "a", "b"];
        for (n, key) in keys.iter().enumerate() {
            let v = setting(b"x", n as u64);
            assert_eq!(
                s.insert(key.to_string(), v.clone()),
                model.insert(key.to_string(), v)
            );
        }
        assert_eq!(s.to_map(), model);
        assert_eq!(s.remove("m"), model.remove("m"));
        assert_eq!(s.remove("missing"), None);
        assert_eq!(s.get("zeta"), model.get("zeta"));
        assert_eq!(s.len(), model.len());
        let keys: Vec<_> = s.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, model.keys().cloned().collect::<Vec<_>>());
        assert_eq!(Settings::from(model.clone()).to_map(), model);
    }
}

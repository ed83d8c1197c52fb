//! [`ConnectInfo`] as a session entry keeps it: the metadata map packed into
//! one allocation.
//!
//! Every connected client has a few metadata strings (transport, client
//! type, client version). As a `HashMap<String, String>` they cost a table
//! allocation plus one per non-empty string, about 400 bytes per session;
//! packed they cost one allocation of a few dozen bytes. They are read
//! rarely (by operators and the store), and unpacking is cheap.

use super::ConnectInfo;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Length-prefixed key and value strings, one after another.
pub(super) struct PackedInfo {
    remote_addr: Option<SocketAddr>,
    /// `(u32 LE length, UTF-8 bytes)` for a key, then for its value, repeated.
    metadata: Box<[u8]>,
}

impl PackedInfo {
    pub(super) fn pack(info: ConnectInfo) -> Self {
        let size: usize = info
            .metadata
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        let mut metadata = Vec::with_capacity(size);
        for (key, value) in &info.metadata {
            for s in [key, value] {
                // Longer than u32::MAX cannot come from a client package.
                let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                metadata.extend_from_slice(&len.to_le_bytes());
                metadata.extend_from_slice(&s.as_bytes()[..len as usize]);
            }
        }
        PackedInfo {
            remote_addr: info.remote_addr,
            metadata: metadata.into_boxed_slice(),
        }
    }

    pub(super) fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The metadata pairs, in no particular order.
    pub(super) fn metadata(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut rest: &[u8] = &self.metadata;
        std::iter::from_fn(move || {
            let key = take_str(&mut rest)?;
            let value = take_str(&mut rest)?;
            Some((key, value))
        })
    }

    pub(super) fn unpack(&self) -> ConnectInfo {
        ConnectInfo {
            remote_addr: self.remote_addr,
            metadata: self
                .metadata()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        }
    }
}

/// The next length-prefixed string; `None` at the end. Only `pack` writes
/// these bytes, so they are always whole and UTF-8.
fn take_str<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let bytes = tail.get(..len)?;
    *rest = &tail[len..];
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks_the_same_info() {
        let mut info = ConnectInfo::from_addr("127.0.0.1:4000".parse().expect("addr"));
        info.metadata.insert("transport".into(), "tcp".into());
        info.metadata.insert("clientType".into(), String::new());
        info.metadata.insert("device".into(), "phone ☎".into());
        let packed = PackedInfo::pack(info.clone());
        assert_eq!(packed.unpack(), info);
        assert_eq!(packed.metadata().count(), 3);
        assert_eq!(
            PackedInfo::pack(ConnectInfo::default()).unpack(),
            ConnectInfo::default()
        );
    }
}

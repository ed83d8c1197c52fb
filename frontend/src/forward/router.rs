//! Picking the backend node of a forwarded request.

use session_proxy_protocol::SessionSnapshot;
use std::hash::Hasher;

/// Picks the backend node for a forwarded request.
pub trait Router: Send + Sync + 'static {
    /// Returns the index into `backends` (the node ids of the route's server
    /// type, sorted) of the node to use, or `None` to refuse the request.
    fn route(&self, session: &SessionSnapshot, route: &str, backends: &[String]) -> Option<usize>;
}

impl<F> Router for F
where
    F: Fn(&SessionSnapshot, &str, &[String]) -> Option<usize> + Send + Sync + 'static,
{
    fn route(&self, session: &SessionSnapshot, route: &str, backends: &[String]) -> Option<usize> {
        self(session, route, backends)
    }
}

/// The default router: rendezvous hashing of the uid, or of the session id
/// when the session is unbound. A user sticks to one node while the set of
/// nodes is stable, adding a node moves only the users it wins, and unbound
/// sessions spread evenly (Pinus hashes the empty string for them and piles
/// them all on one node).
#[derive(Clone, Copy, Debug, Default)]
pub struct HashRouter;

impl Router for HashRouter {
    fn route(&self, session: &SessionSnapshot, _route: &str, backends: &[String]) -> Option<usize> {
        let key = match &session.uid {
            Some(uid) => uid.clone(),
            None => session.sid.as_u64().to_string(),
        };
        pick_by_key(key.as_bytes(), backends)
    }
}

/// Rendezvous (highest-random-weight) choice of one of `nodes` for `key`.
pub fn pick_by_key<S: AsRef<str>>(key: &[u8], nodes: &[S]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by_key(|(_, node)| {
            let mut h = Fnv64::default();
            h.write(key);
            h.write(&[0xff]);
            h.write(node.as_ref().as_bytes());
            mix(h.finish())
        })
        .map(|(i, _)| i)
}

/// FNV-1a: stable across processes and builds, unlike std's `DefaultHasher`.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_proxy_protocol::SessionId;

    fn session(uid: Option<&str>, sid: u64) -> SessionSnapshot {
        SessionSnapshot {
            sid: SessionId::from_raw(sid),
            frontend_id: "f".into(),
            uid: uid.map(str::to_string),
            settings: Default::default(),
        }
    }

    #[test]
    fn hash_router_is_stable_and_spreads_unbound_sessions() {
        let nodes: Vec<String> = ["chat-1", "chat-2", "chat-3"].map(String::from).to_vec();
        let a = HashRouter.route(&session(Some("alice"), 1), "chat.x.y", &nodes);
        assert_eq!(
            a,
            HashRouter.route(&session(Some("alice"), 2), "chat.x.y", &nodes)
        );
        let mut counts = [0; 3];
        for sid in 0..3000 {
            counts[HashRouter
                .route(&session(None, sid), "chat.x.y", &nodes)
                .expect("a node")] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn adding_a_node_moves_only_the_keys_it_wins() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        for k in 0..500u32 {
            let key = k.to_string();
            let before = pick_by_key(key.as_bytes(), &three).expect("node");
            let after = pick_by_key(key.as_bytes(), &four).expect("node");
            assert!(
                after == before || after == 3,
                "key {k} moved between old nodes"
            );
        }
    }
}

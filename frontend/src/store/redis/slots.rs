//! Batches on a Redis Cluster, one pipeline per master.
//!
//! The cluster client keeps a pipeline within one slot, so a batch of
//! sessions (each its own slot) would go as one request per command: a
//! channel message, a timer and an answer channel each, which tripled the
//! writer's CPU per session written (docs/BENCHMARKS.md). Knowing which
//! master serves which slot (`CLUSTER SLOTS`, kept until a redirect says it
//! changed), a batch goes as one pipeline per master instead; each master
//! runs the commands of any of its slots.

use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Arg, Cmd, ErrorKind, FromRedisValue, RedisResult, Value};
use session_proxy_protocol::sync::RwLockUnpoisoned as _;
use std::sync::{Arc, RwLock};

/// Slots in a cluster.
const SLOTS: u16 = 16384;

/// The slot of a key: of its hash tag (the part between the first `{` and
/// the next `}`, if not empty), else of the whole key.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let len = rest.iter().position(|b| *b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// The slot of a command of the store's: its first key (the fourth
/// argument of an EVALSHA, the second of anything else).
fn slot_of(cmd: &Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        Arg::Cursor => None,
    });
    let name = args.next()??;
    let key = if name.eq_ignore_ascii_case(b"EVALSHA") {
        args.nth(2)??
    } else {
        args.next()??
    };
    Some(key_slot(key))
}

/// Which master serves which slots.
struct SlotMap {
    /// (first slot, last slot, index into `masters`), by first slot.
    ranges: Vec<(u16, u16, usize)>,
    masters: Vec<(String, u16)>,
}

impl SlotMap {
    /// From a `CLUSTER SLOTS` answer: `[[first, last, [host, port, …], …], …]`.
    fn parse(answer: &Value) -> Option<SlotMap> {
        let Value::Array(ranges) = answer else {
            return None;
        };
        let mut map = SlotMap {
            ranges: Vec::with_capacity(ranges.len()),
            masters: Vec::new(),
        };
        for range in ranges {
            let Value::Array(parts) = range else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let (Some(host), Some(Value::Int(port))) = (master.first(), master.get(1)) else {
                return None;
            };
            let host = String::from_redis_value(host).ok()?;
            if host.is_empty() {
                // "The node that answered": not an address to route by.
                return None;
            }
            let master = (host, u16::try_from(*port).ok()?);
            let index = match map.masters.iter().position(|m| *m == master) {
                Some(i) => i,
                None => {
                    map.masters.push(master);
                    map.masters.len() - 1
                }
            };
            map.ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                index,
            ));
        }
        map.ranges.sort_unstable();
        Some(map)
    }

    fn master_of(&self, slot: u16) -> Option<usize> {
        let after = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (_, last, master) = self.ranges.get(after.checked_sub(1)?)?;
        (slot <= *last).then_some(*master)
    }
}

/// The slot map of one cluster connection, loaded when first needed and
/// dropped when a redirect says it is stale.
#[derive(Default)]
pub(super) struct Slots(RwLock<Option<Arc<SlotMap>>>);

impl Slots {
    async fn map(&self, c: &mut ClusterConnection) -> Option<Arc<SlotMap>> {
        if let Some(map) = self.0.read_unpoisoned().clone() {
            return Some(map);
        }
        let answer = c
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .ok()?;
        let map = Arc::new(SlotMap::parse(&answer)?);
        *self.0.write_unpoisoned() = Some(map.clone());
        Some(map)
    }

    fn forget(&self) {
        *self.0.write_unpoisoned() = None;
    }

    /// Runs `cmds` as one pipeline per master and answers in their order;
    /// `None` when it cannot (no slot map, or it proved stale: the caller
    /// then routes each command by itself).
    pub(super) async fn run(
        &self,
        c: &mut ClusterConnection,
        cmds: &[Cmd],
    ) -> RedisResult<Option<Vec<Value>>> {
        let Some(map) = self.map(c).await else {
            return Ok(None);
        };
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); map.masters.len()];
        for (i, cmd) in cmds.iter().enumerate() {
            let Some(master) = slot_of(cmd).and_then(|slot| map.master_of(slot)) else {
                return Ok(None);
            };
            groups[master].push(i);
        }
        let groups: Vec<(usize, Vec<usize>)> = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect();
        let calls = groups.iter().map(|(master, group)| {
            let mut pipe = ::redis::pipe();
            for i in group {
                pipe.add_command(cmds[*i].clone());
            }
            let (host, port) = map.masters[*master].clone();
            let (mut c, count) = (c.clone(), group.len());
            async move {
                let route = SingleNodeRoutingInfo::ByAddress { host, port };
                c.route_pipeline(&pipe, 0, count, route).await
            }
        });
        match futures::future::try_join_all(calls).await {
            Ok(answers) => {
                let mut out = vec![Value::Nil; cmds.len()];
                for ((_, group), answers) in groups.iter().zip(answers) {
                    for (i, answer) in group.iter().zip(answers) {
                        out[*i] = answer;
                    }
                }
                Ok(Some(out))
            }
            // A slot moved, or a master is not one the client knows (yet):
            // every script may run twice, so the batch goes again command
            // by command, which follows the redirects.
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::Moved
                        | ErrorKind::Ask
                        | ErrorKind::TryAgain
                        | ErrorKind::ClusterDown
                        | ErrorKind::ClientError
                ) =>
            {
                self.forget();
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key_slot, slot_of, SlotMap};
    use ::redis::Value;

    #[test]
    fn slots_are_those_redis_computes() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 0x31c3, "the CRC16 check value");
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        let mut eval = ::redis::cmd("EVALSHA");
        eval.arg("sha").arg(2).arg("sp:s:{00ff}").arg("sp:o:{00ff}");
        assert_eq!(slot_of(&eval), Some(key_slot(b"00ff")));
        assert_eq!(
            slot_of(::redis::cmd("SADD").arg("sp:u:{ann}").arg("00ff")),
            Some(key_slot(b"ann"))
        );
    }

    #[test]
    fn the_slot_map_finds_each_slots_master() {
        let node = |host: &str, port| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a, b, master| Value::Array(vec![Value::Int(a), Value::Int(b), master]);
        let answer = Value::Array(vec![
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(0, 5460, node("127.0.0.1", 7000)),
            range(10923, 16383, node("127.0.0.1", 7002)),
        ]);
        let map = SlotMap::parse(&answer).expect("parsed");
        let master = |slot| map.master_of(slot).map(|i| map.masters[i].1);
        assert_eq!(master(0), Some(7000));
        assert_eq!(master(5460), Some(7000));
        assert_eq!(master(5461), Some(7001));
        assert_eq!(master(16383), Some(7002));
        let gap = Value::Array(vec![range(0, 100, node("127.0.0.1", 7000))]);
        let map = SlotMap::parse(&gap).expect("parsed");
        assert_eq!(map.master_of(101), None, "an unserved slot has no master");
        let unknown = Value::Array(vec![range(0, 100, node("", 7000))]);
        assert!(SlotMap::parse(&unknown).is_none());
    }
}

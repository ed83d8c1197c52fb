//! The Lua scripts of the Redis store. Every write that depends on a
//! session's epoch is one script, so the check and the write are atomic.
//!
//! Each script touches the keys of one hash slot only, so they run on a
//! Redis Cluster as they do on one server: the session scripts take KEYS
//! session hash, owner key (both tagged with the sid); the admission
//! script takes KEYS admission set, pending evictions (both tagged with the
//! uid). What crosses slots (a uid's set of sessions) is written after the
//! script by idempotent commands, and repaired by the sweep when a frontend
//! dies in between.

use crate::store::StoreError;
use ::redis::Script;

/// Writes a session unless fenced. ARGV: epoch, owner, record, ttl ms,
/// uid ('' if none). Answers `{1, previous uid or ''}` when written, `{0,
/// current owner}` when fenced.
const PUT: &str = r#"
local e = tonumber(redis.call('HGET', KEYS[1], 'e') or '-1')
if e > tonumber(ARGV[1]) then return {0, redis.call('HGET', KEYS[1], 'f') or ''} end
local old = redis.call('GET', KEYS[2]) or ''
redis.call('HSET', KEYS[1], 'e', ARGV[1], 'f', ARGV[2], 'd', ARGV[3], 'u', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= old then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) else redis.call('DEL', KEYS[2]) end
end
return {1, old}
"#;

/// Ends a session. ARGV[1] mode: `delete` (for whoever holds it),
/// `release` (its owner closed it; fenced unless still held at epoch
/// ARGV[2]) or `clean` (only if the session key is gone: the index of an
/// expired or evicted key). The record goes, the epoch stays one up with
/// no owner until the TTL ends, so a frontend that lost it cannot write it
/// back. Answers `{1 ended / 0 not held, its uid or ''}`, or `{2, current
/// owner}` when fenced.
const END: &str = r#"
if ARGV[1] == 'clean' and redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
if ARGV[1] == 'release' then
  local e = tonumber(redis.call('HGET', KEYS[1], 'e') or '-1')
  if e > tonumber(ARGV[2]) then return {2, redis.call('HGET', KEYS[1], 'f') or ''} end
end
local ended = 0
if redis.call('HEXISTS', KEYS[1], 'd') == 1 then
  redis.call('HDEL', KEYS[1], 'd', 'u')
  redis.call('HINCRBY', KEYS[1], 'e', 1)
  redis.call('HSET', KEYS[1], 'f', '')
  ended = 1
end
local uid = redis.call('GET', KEYS[2]) or ''
redis.call('DEL', KEYS[2])
return {ended, uid}
"#;

/// Moves a session to ARGV[2] if it is still held at epoch ARGV[1]; the
/// new epoch, or nil. KEYS: session key.
const CLAIM: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then return false end
if tonumber(redis.call('HGET', KEYS[1], 'e') or '0') ~= tonumber(ARGV[1]) then return false end
redis.call('HSET', KEYS[1], 'f', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'e', 1)
"#;

/// Restarts a session's TTL (ARGV[2] ms) if held at epoch ARGV[1]: 1 if
/// done, 0 if gone, the current owner if fenced. KEYS: session key.
const REFRESH: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return 0 end
if tonumber(e) > tonumber(ARGV[1]) then return redis.call('HGET', KEYS[1], 'f') or '' end
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Admits session ARGV[1] to the uid whose admission set is KEYS[1]
/// (KEYS[2]: its pending evictions; ARGV[2] limit, [3] '1' to evict the
/// oldest, [4] grace ms, [5] reason, then pairs of member and what the
/// caller read of it: `g` ended or moved to another uid, `a` no session
/// key yet). A `g` member is dropped, an `a` one once its grace is over.
/// Evicted members go to the pending hash (sid -> reason) for the caller
/// to end. Answers `{'1', evicted sid, …}` or `{'0'}`.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 6, #ARGV, 2 do
  local at = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if at and (ARGV[i + 1] == 'g' or now - tonumber(at) > tonumber(ARGV[4])) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'1'} end
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[2])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {'1'}
end
if ARGV[3] ~= '1' then return {'0'} end
local out = {'1'}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, n - limit)) do
  table.insert(out, m)
  redis.call('ZREM', KEYS[1], m)
  redis.call('HSET', KEYS[2], m, ARGV[5])
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return out
"#;

/// Ends a session an admission evicted, whether or not it was written yet
/// (a tombstone with the TTL ARGV[2] ms fences a late first write), and
/// announces it on channel ARGV[3] as `<ARGV[4] sid hex> <ARGV[1]
/// reason>`. Answers `{its owner or '', its uid or ''}`. Running it again
/// only fences once more.
const EVICT: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'f') or ''
redis.call('HDEL', KEYS[1], 'd', 'u')
redis.call('HINCRBY', KEYS[1], 'e', 1)
redis.call('HSET', KEYS[1], 'f', '')
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local uid = redis.call('GET', KEYS[2]) or ''
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
return {owner, uid}
"#;

/// Binds a uid to a node of a server type if its binding is still ARGV[1]
/// ('' for none). ARGV: expected, node, ttl ms. KEYS: binding key. Answers
/// `{binding held afterwards, 1 written / 0 not}`.
const REBIND: &str = r#"
local now = redis.call('GET', KEYS[1]) or ''
if now ~= ARGV[1] then return {now, 0} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return {ARGV[2], 1}
"#;

/// The store's scripts, loaded on connect (on every master of a cluster)
/// and again after a server restart (pipelined EVALSHA calls then fail
/// with NOSCRIPT).
#[derive(Clone)]
pub(super) struct Scripts {
    pub(super) rebind: Script,
    pub(super) put: Script,
    pub(super) end: Script,
    pub(super) claim: Script,
    pub(super) refresh: Script,
    pub(super) admit: Script,
    pub(super) evict: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            rebind: Script::new(REBIND),
            put: Script::new(PUT),
            end: Script::new(END),
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            admit: Script::new(ADMIT),
            evict: Script::new(EVICT),
        }
    }

    pub(super) async fn load(&self, conn: &mut super::conn::Link) -> Result<(), StoreError> {
        for script in [
            &self.rebind,
            &self.put,
            &self.end,
            &self.claim,
            &self.refresh,
            &self.admit,
            &self.evict,
        ] {
            script.prepare_invoke().load_async(conn).await?;
        }
        Ok(())
    }
}

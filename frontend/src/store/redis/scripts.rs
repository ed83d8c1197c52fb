//! The Lua scripts of the Redis store: every write that depends on a
//! session's epoch is one script, so the check and the write are atomic.

use crate::store::StoreError;
use ::redis::aio::ConnectionManager;
use ::redis::Script;

// Script pieces. Every script that touches the index takes KEYS: session
// key, owner hash; ARGV[1]: sid hex, ARGV[2]: prefix.

/// Answers the current owner (a string, `''` for none) when the session
/// is held under a newer epoch than ARGV[3].
macro_rules! fence {
    () => {
        "local e = tonumber(redis.call('HGET', KEYS[1], 'e') or '-1')\n\
         if e > tonumber(ARGV[3]) then return redis.call('HGET', KEYS[1], 'f') or '' end\n"
    };
}

/// Deletes the record, leaving the epoch one up and no owner; sets
/// `ended`. Then takes the session out of its uid set and the owner hash.
macro_rules! end_session {
    () => {
        "local ended = 0\n\
         if redis.call('HEXISTS', KEYS[1], 'd') == 1 then\n\
           redis.call('HDEL', KEYS[1], 'd')\n\
           redis.call('HINCRBY', KEYS[1], 'e', 1)\n\
           redis.call('HSET', KEYS[1], 'f', '')\n\
           ended = 1\n\
         end\n\
         local uid = redis.call('HGET', KEYS[2], ARGV[1])\n\
         if uid then\n\
           redis.call('SREM', ARGV[2] .. 'u:' .. uid, ARGV[1])\n\
           redis.call('ZREM', ARGV[2] .. 'l:' .. uid, ARGV[1])\n\
         end\n\
         redis.call('HDEL', KEYS[2], ARGV[1])\n"
    };
}

/// Writes a session unless fenced, and keeps its uid set and owner entry
/// in step. ARGV[3..]: epoch, owner, record, ttl ms, uid ('' if none).
/// Returns nil when written, the current owner when fenced.
const PUT: &str = concat!(
    fence!(),
    r#"
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= ARGV[7] then
  redis.call('SREM', ARGV[2] .. 'u:' .. old, ARGV[1])
  redis.call('ZREM', ARGV[2] .. 'l:' .. old, ARGV[1])
end
redis.call('HSET', KEYS[1], 'e', ARGV[3], 'f', ARGV[4], 'd', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('SADD', ARGV[2] .. 'u:' .. ARGV[7], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[7])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return false
"#
);

/// Ends a session for whoever holds it; returns 1 if it existed. With
/// ARGV[3] = '1' it only cleans the index of a key that is gone.
const DELETE: &str = concat!(
    "if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n",
    end_session!(),
    "return ended\n"
);

/// Deletes a session its owner closed, unless fenced. ARGV[3]: epoch.
/// Returns nil when done, the current owner when fenced.
const RELEASE: &str = concat!(fence!(), end_session!(), "return false\n");

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
/// (KEYS[2]: owner hash; ARGV[2]: prefix, [3] limit, [4] '1' to evict the
/// oldest, [5] tombstone ttl ms, [6] reason, [7] grace ms). Members whose
/// session ended, or that were never written within the grace, are
/// dropped first. Returns {1, evicted sid, its owner, …} or {0}.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m, at = members[i], tonumber(members[i + 1])
  if m ~= ARGV[1] then
    local k = ARGV[2] .. 's:' .. m
    local gone
    if redis.call('EXISTS', k) == 0 then
      gone = now - at > tonumber(ARGV[7])
    else
      gone = redis.call('HEXISTS', k, 'd') == 0
    end
    if gone then redis.call('ZREM', KEYS[1], m) end
  end
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {'1'} end
local n = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[3])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  return {'1'}
end
if ARGV[4] ~= '1' then return {'0'} end
local out = {'1'}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, n - limit)) do
  local k = ARGV[2] .. 's:' .. m
  table.insert(out, m)
  table.insert(out, redis.call('HGET', k, 'f') or '')
  redis.call('HDEL', k, 'd')
  redis.call('HINCRBY', k, 'e', 1)
  redis.call('HSET', k, 'f', '')
  if redis.call('PTTL', k) < 0 then redis.call('PEXPIRE', k, ARGV[5]) end
  local u = redis.call('HGET', KEYS[2], m)
  if u then redis.call('SREM', ARGV[2] .. 'u:' .. u, m) end
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
  redis.call('PUBLISH', ARGV[2] .. 'evicted', m .. ' ' .. ARGV[6])
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
return out
"#;

/// The store's scripts, loaded on connect and again after a server
/// restart (pipelined EVALSHA calls then fail with NOSCRIPT).
#[derive(Clone)]
pub(super) struct Scripts {
    pub(super) put: Script,
    pub(super) delete: Script,
    pub(super) release: Script,
    pub(super) claim: Script,
    pub(super) refresh: Script,
    pub(super) admit: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            put: Script::new(PUT),
            delete: Script::new(DELETE),
            release: Script::new(RELEASE),
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            admit: Script::new(ADMIT),
        }
    }

    pub(super) async fn load(&self, conn: &mut ConnectionManager) -> Result<(), StoreError> {
        for script in [
            &self.put,
            &self.delete,
            &self.release,
            &self.claim,
            &self.refresh,
            &self.admit,
        ] {
            script.prepare_invoke().load_async(conn).await?;
        }
        Ok(())
    }
}

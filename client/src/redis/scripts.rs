//! The Lua scripts of the Redis backend, one per operation that must read and
//! write atomically.
//!
//! Every script names all its keys in `KEYS` except `rpc_call`'s heartbeat keys,
//! and every key of one mesh carries the hash tag `{<name>}`, so a script's keys
//! always share one slot and run unchanged on Redis Cluster. Values are the
//! MessagePack bytes the clients store; `cmsgpack` (built into Redis's Lua)
//! decodes them where a script must look inside (numbers for `incr`, structural
//! equality for `cas`). Lua numbers are doubles: counters are exact up to 2^53.

use std::sync::OnceLock;

use redis::Script;

/// Structural equality of two decoded MessagePack values (map order and
/// `1` vs `1.0` do not matter; both are Lua tables and numbers).
const DEEP_EQ: &str = r#"
local function deq(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= 'table' then return a == b end
  for k, v in pairs(a) do
    if not deq(v, b[k]) then return false end
  end
  for k, _ in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end
local function same(cur, want)
  if cur == want then return true end
  local ok1, a = pcall(cmsgpack.unpack, cur)
  local ok2, b = pcall(cmsgpack.unpack, want)
  return ok1 and ok2 and deq(a, b)
end
"#;

/// `incr`: KEYS[1] the entry; ARGV[1] the amount. Keeps the entry's TTL; a
/// missing entry counts from 0. Returns the new value's MessagePack bytes.
const INCR: &str = r#"
local v = redis.call('GET', KEYS[1])
local n = 0
if v then
  local ok, x = pcall(cmsgpack.unpack, v)
  if not ok or type(x) ~= 'number' then
    return redis.error_reply('ENOTNUMBER the value at `' .. ARGV[2] .. '` is not a number')
  end
  n = x
end
n = n + tonumber(ARGV[1])
local packed = cmsgpack.pack(n)
if v then
  redis.call('SET', KEYS[1], packed, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], packed)
end
return packed
"#;

/// `cas`: KEYS[1] the entry; ARGV: has-prev (`0`/`1`), prev, has-next, next.
/// Keeps the TTL when it stores. Returns 1 when swapped.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
else
  if not cur then return 0 end
  if not same(cur, ARGV[2]) then return 0 end
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[4], 'KEEPTTL')
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// `lock`: KEYS the lock, the token counter, the lock's high mark; ARGV the
/// owner id and the ttl in ms. Returns the new token, or nil when held.
const LOCK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. t, 'PX', ARGV[2])
local hm = tonumber(redis.call('GET', KEYS[3]) or '0')
if t > hm then redis.call('SET', KEYS[3], t) end
return t
"#;

/// `unlock`: KEYS[1] the lock; ARGV[1] the owner id. Returns 1 when this owner
/// held it.
const UNLOCK: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Fenced writes: KEYS the lock's high mark, the token counter, the entry;
/// ARGV the token, the op (`set`/`cas`/`del`), then per op: `set` value and ttl
/// ms (`0`: none); `cas` as [`CAS`]. A token above the counter (never issued) or
/// below the high mark fails with EFENCED; a passing token raises the mark.
const FENCED: &str = r#"
local tok = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local hm = tonumber(redis.call('GET', KEYS[1]) or '0')
if tok == nil or tok > last or tok < hm then
  return redis.error_reply('EFENCED stale fencing token ' .. ARGV[1] .. ' for lock `' .. ARGV[7] .. '`')
end
if tok > hm then redis.call('SET', KEYS[1], ARGV[1]) end
local op = ARGV[2]
if op == 'set' then
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[3], ARGV[3])
  end
  return 1
elseif op == 'del' then
  return redis.call('DEL', KEYS[3])
end
local cur = redis.call('GET', KEYS[3])
if ARGV[3] == '0' then
  if cur then return 0 end
else
  if not cur then return 0 end
  if not same(cur, ARGV[4]) then return 0 end
end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[6], 'KEEPTTL')
else
  redis.call('DEL', KEYS[3])
end
return 1
"#;

/// `call`: KEYS the procedure's worker set and its call queue; ARGV the call
/// record and the heartbeat key prefix. Drops workers whose heartbeat expired;
/// with none left fails with ENOHANDLER, else queues the call.
const RPC_CALL: &str = r#"
local live = 0
for _, w in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[2] .. w) == 1 then
    live = live + 1
  else
    redis.call('SREM', KEYS[1], w)
  end
end
if live == 0 then
  return redis.error_reply('ENOHANDLER no handler registered for `' .. ARGV[3] .. '`')
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return live
"#;

/// `call` liveness: KEYS the call's owner key; ARGV the heartbeat key prefix.
/// Returns 1 when a worker took the call and its heartbeat has expired.
const RPC_GONE: &str = r#"
local w = redis.call('GET', KEYS[1])
if not w then return 0 end
if redis.call('EXISTS', ARGV[1] .. w) == 1 then return 0 end
return 1
"#;

/// A worker's answer: KEYS the caller's reply list, the worker's in-flight list,
/// the call's owner key; ARGV the reply record, the call record, the reply list's ttl.
const RPC_DONE: &str = r#"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('LREM', KEYS[2], 1, ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"#;

/// Idempotent `pub`: KEYS[1] the (producer, channel) dedup set; ARGV the
/// sequence number, the Redis channel, the payload, the window, the ttl in ms.
/// The broker's rule: a seq above the highest accepted is delivered; one inside
/// `(highest - window, highest]` is delivered iff not accepted before; lower is a
/// duplicate. Returns the delivered count, or nil for a duplicate.
const PUB_IDEMPOTENT: &str = r#"
local seq = tonumber(ARGV[1])
local window = tonumber(ARGV[4])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local hi = tonumber(top[2] or '0')
if seq <= hi then
  if seq <= hi - window then return false end
  if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return false end
end
redis.call('ZADD', KEYS[1], seq, ARGV[1])
if seq > hi then hi = seq end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', hi - window)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"#;

/// The compiled scripts, loaded once per process (EVALSHA, EVAL on NOSCRIPT).
pub(super) struct Scripts {
    pub incr: Script,
    pub cas: Script,
    pub lock: Script,
    pub unlock: Script,
    pub fenced: Script,
    pub rpc_call: Script,
    pub rpc_gone: Script,
    pub rpc_done: Script,
    pub pub_idempotent: Script,
}

/// The scripts.
pub(super) fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        incr: Script::new(INCR),
        cas: Script::new(&format!("{DEEP_EQ}{CAS}")),
        lock: Script::new(LOCK),
        unlock: Script::new(UNLOCK),
        fenced: Script::new(&format!("{DEEP_EQ}{FENCED}")),
        rpc_call: Script::new(RPC_CALL),
        rpc_gone: Script::new(RPC_GONE),
        rpc_done: Script::new(RPC_DONE),
        pub_idempotent: Script::new(PUB_IDEMPOTENT),
    })
}

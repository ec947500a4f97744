"""The Lua scripts :class:`~hybridcache.redis.RedisL2` runs: each check-and-act that must be atomic in Redis.

Each script names the keys and arguments it takes. On a cluster every call touches one slot (the keys it is
given share a hash tag, see ``redis.py``); only on a standalone server or Sentinel is ``INVALIDATE`` also given
the removed entries' keys, so one script removes them and bumps the counters. The epoch fields (``__epoch__``,
``__server__``) live in the generation hash next to the prefix/tag counters.
"""

from __future__ import annotations

from typing import Final

# Shared by the scripts that may be the first to touch the generation hash: create the epoch, remember the server.
EPOCH_FUNCTION: Final = """
local function current_epoch(gens, candidate, ttl)
  local epoch = redis.call('HGET', gens, '__epoch__')
  if not epoch then
    epoch = candidate
    local server = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
    redis.call('HSET', gens, '__epoch__', epoch, '__server__', server)
  end
  redis.call('PEXPIRE', gens, ttl)
  return epoch
end
"""

# The exact key's capture token ({K}:hc-kgen): a random value created by the first capture that finds none and
# deleted by every removal of the key. A conditional set stores only while the token it captured is still there,
# so a removal, an eviction or a flush of the token all refuse it: a token that vanished can never compare equal
# to one captured before (a counter that vanished read 0 again, equal to a 0 captured before the removal).
# KEYS: key token. ARGV: candidate token, token TTL ms. Returns the token.
CAPTURE_TOKEN_FUNCTION: Final = """
local function capture_token(key, candidate, ttl)
  local token = redis.call('GET', key)
  if not token then
    token = candidate
    redis.call('SET', key, token, 'PX', ttl)
  end
  return token
end
"""

# KEYS: gens, key token. ARGV: candidate epoch, meta TTL, candidate token, token TTL ms, fields...
CAPTURE: Final = (
    EPOCH_FUNCTION
    + CAPTURE_TOKEN_FUNCTION
    + """
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2]), capture_token(KEYS[2], ARGV[3], ARGV[4])}
for i = 5, #ARGV do result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0' end
return result
"""
)

# Cluster: the entry slot's half of CAPTURE. KEYS: key token. ARGV: candidate token, token TTL ms.
CAPTURE_KEY: Final = (
    CAPTURE_TOKEN_FUNCTION
    + """
return capture_token(KEYS[1], ARGV[1], ARGV[2])
"""
)

# Cluster: the meta slot's half of CAPTURE (the exact key's generation lives in another slot and is read apart).
# KEYS: gens. ARGV: candidate epoch, meta TTL, fields...
CAPTURE_FIELDS: Final = (
    EPOCH_FUNCTION
    + """
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2])}
for i = 3, #ARGV do result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0' end
return result
"""
)

# KEYS: entry, key token[, gens]. ARGV: payload, TTL ms, captured key token[, epoch, field, gen, ...].
# Without the gens key (cluster) only the exact key's token is checked here; stamps cover the rest.
SET_IF_CURRENT: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
if KEYS[3] then
  if redis.call('HGET', KEYS[3], '__epoch__') ~= ARGV[4] then return 0 end
  for i = 5, #ARGV, 2 do
    if tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0') > tonumber(ARGV[i + 1]) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: entry, key token.
REMOVE_KEY: Final = """
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# KEYS: gens, seq, then (entry, key token) per removed key (standalone only). ARGV: candidate epoch, meta TTL,
# publish command, channel, sender, JSON list of full keys, then the fields to bump.
INVALIDATE: Final = (
    EPOCH_FUNCTION
    + """
local epoch = current_epoch(KEYS[1], ARGV[1], ARGV[2])
for i = 3, #KEYS, 2 do redis.call('DEL', KEYS[i], KEYS[i + 1]) end
local gens = {}
for i = 7, #ARGV do gens[ARGV[i]] = redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local message = cjson.encode({i = ARGV[5], s = seq, e = epoch, k = cjson.decode(ARGV[6]), g = gens})
redis.call(ARGV[3], ARGV[4], message)
return message
"""
)

# KEYS: gens, seq. ARGV: candidate epoch, meta TTL. A different server than the one that wrote the epoch: new epoch.
SYNC: Final = """
local server = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if redis.call('HGET', KEYS[1], '__server__') ~= server then
  redis.call('HSET', KEYS[1], '__epoch__', ARGV[1], '__server__', server)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""

"""The Lua scripts :class:`~hybridcache.redis.RedisL2` runs: each check-and-act that must be atomic in Redis.

Each script names the keys and arguments it takes. On a cluster every call touches one slot (the keys it is
given share a hash tag, see ``redis.py``); only on a standalone server or Sentinel is ``INVALIDATE`` also given
the removed entries' keys, so one script removes them and bumps the counters. The epoch fields (``__epoch__``,
``__server__``) live in the generation hash next to the prefix/tag counters.
"""

from __future__ import annotations

from typing import Final

# The identity of the server running the script: its run_id, new at every start (a restart, with or without
# persistence) and different on a replica promoted by a failover. Reading it costs about 2.5 us of server time.
SERVER_FUNCTION: Final = """
local function server_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
end
"""

# Shared by every script that trusts the generation hash: the epoch, created if missing, and drawn anew when the
# hash was written by another server (``server``: server_id(), read once per script). A snapshot restored on
# restart, or a lagging replica promoted, holds counters that went back; under a new epoch no stamp made before can
# look current against them.
EPOCH_FUNCTION: Final = (
    SERVER_FUNCTION
    + """
local function current_epoch(gens, candidate, ttl, server)
  local stored = redis.call('HMGET', gens, '__epoch__', '__server__')
  local epoch = stored[1]
  if not epoch or stored[2] ~= server then
    epoch = candidate
    redis.call('HSET', gens, '__epoch__', epoch, '__server__', server)
  end
  redis.call('PEXPIRE', gens, ttl)
  return epoch
end
"""
)

# The exact key's capture token ({K}:hc-kgen): a random value created by the first capture that finds none and
# deleted by every removal of the key. A conditional set stores only while the token it captured is still there,
# so a removal, an eviction or a flush of the token all refuse it: a token that vanished can never compare equal
# to one captured before (a counter that vanished read 0 again, equal to a 0 captured before the removal).
# A token ends with '@' and the id of the server that created it: one restored from a snapshot, or replicated from
# a master that failed over, is replaced by the next capture and refused by every conditional set.
CAPTURE_TOKEN_FUNCTION: Final = """
local function capture_token(key, candidate, ttl, server)
  local token = redis.call('GET', key)
  if not token or string.sub(token, -(#server + 1)) ~= '@' .. server then
    token = candidate .. '@' .. server
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
local server = server_id()
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2], server), capture_token(KEYS[2], ARGV[3], ARGV[4], server)}
for i = 5, #ARGV do result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0' end
return result
"""
)

# Cluster: the entry slot's half of CAPTURE. KEYS: key token. ARGV: candidate token, token TTL ms.
CAPTURE_KEY: Final = (
    SERVER_FUNCTION
    + CAPTURE_TOKEN_FUNCTION
    + """
return capture_token(KEYS[1], ARGV[1], ARGV[2], server_id())
"""
)

# The epoch and the fields' counters: the meta slot's half of CAPTURE on a cluster (the key's token lives in another
# slot and is read apart), and the check of an L2 entry's stamp while the local table is not trusted.
# KEYS: gens. ARGV: candidate epoch, meta TTL, fields...
CAPTURE_FIELDS: Final = (
    EPOCH_FUNCTION
    + """
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2], server_id())}
for i = 3, #ARGV do result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0' end
return result
"""
)

# KEYS: entry, key token[, gens]. ARGV: payload, TTL ms, captured key token[, epoch, field, gen, ...].
# Without the gens key (cluster) only the exact key's token is checked here; stamps cover the rest.
SET_IF_CURRENT: Final = (
    SERVER_FUNCTION
    + """
local server = server_id()
if redis.call('GET', KEYS[2]) ~= ARGV[3] or string.sub(ARGV[3], -(#server + 1)) ~= '@' .. server then return 0 end
if KEYS[3] then
  local stored = redis.call('HMGET', KEYS[3], '__epoch__', '__server__')
  if stored[1] ~= ARGV[4] or stored[2] ~= server then return 0 end
  for i = 5, #ARGV, 2 do
    if tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0') > tonumber(ARGV[i + 1]) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

# KEYS: entry, key token.
REMOVE_KEY: Final = """
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

# KEYS: gens, seq, then (entry, key token) per removed key (standalone only). ARGV: candidate epoch, meta TTL,
# publish command, channel, sender, JSON list of full keys, the sender's wall time (seconds; the message's ``t``,
# see generations.RecentRemovals), then the fields to bump.
INVALIDATE: Final = (
    EPOCH_FUNCTION
    + """
local epoch = current_epoch(KEYS[1], ARGV[1], ARGV[2], server_id())
for i = 3, #KEYS, 2 do redis.call('DEL', KEYS[i], KEYS[i + 1]) end
local gens = {}
for i = 8, #ARGV do gens[ARGV[i]] = redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local message = cjson.encode({i = ARGV[5], s = seq, e = epoch, k = cjson.decode(ARGV[6]), t = ARGV[7], g = gens})
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

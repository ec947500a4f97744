"""The Lua scripts :class:`~hybridcache._redis.l2.RedisL2` runs: each check-and-act that must be atomic in Redis.

Each script names the keys and arguments it takes. On a cluster every call touches one slot (the keys it is
given share a hash tag, see ``l2.py``); only on a standalone server or Sentinel is ``INVALIDATE`` also given
the removed entries' keys, so one script removes them and bumps the counters. The epoch fields (``__epoch__``,
``__server__``) live in the generation hash next to the prefix/tag counters.
"""

from __future__ import annotations

from typing import Final

from hybridcache._generations import FIRST_TIMESTAMP

# Fields of the generation hash each invalidation looks at for forgetting (one HSCAN step).
SWEEP_COUNT: Final = 64

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

# The server's clock in milliseconds: generations are times (see _generations.py).
NOW_FUNCTION: Final = """
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"""

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
# Returns the epoch, the token, the server's time (ms: the stamp's floor is taken from it), then the fields' counters.
CAPTURE: Final = (
    EPOCH_FUNCTION
    + CAPTURE_TOKEN_FUNCTION
    + NOW_FUNCTION
    + """
local server = server_id()
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2], server), capture_token(KEYS[2], ARGV[3], ARGV[4], server)}
result[3] = now_ms()
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
# KEYS: gens. ARGV: candidate epoch, meta TTL, fields... Returns the epoch, the server's time (ms), the counters.
CAPTURE_FIELDS: Final = (
    EPOCH_FUNCTION
    + NOW_FUNCTION
    + """
local result = {current_epoch(KEYS[1], ARGV[1], ARGV[2], server_id()), now_ms()}
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

# KEYS: gens, seq, sweep cursor, then (entry, key token) per removed key (standalone only). ARGV: candidate epoch,
# meta TTL, publish command, channel, sender, JSON list of full keys, the sender's wall time (seconds; the message's
# ``t``, see _generations.RecentRemovals), retention ms, then the fields to bump.
# Each bump sets a field to max(old + 1, now); then the sweep looks at a few more fields (one HSCAN step, cursor
# kept in KEYS[3]) and deletes those last bumped longer than the retention ago. Fields are created only by bumps,
# so sweeping SWEEP_COUNT per invalidation keeps the hash near the fields bumped within the retention.
INVALIDATE: Final = (
    (
        EPOCH_FUNCTION
        + NOW_FUNCTION
        + """
local epoch = current_epoch(KEYS[1], ARGV[1], ARGV[2], server_id())
for i = 4, #KEYS, 2 do redis.call('DEL', KEYS[i], KEYS[i + 1]) end
local now = now_ms()
local gens = {}
for i = 9, #ARGV do
  local generation = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') + 1, now)
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%d', generation))
  gens[ARGV[i]] = generation
end
local horizon = now - tonumber(ARGV[8])
local page = redis.call('HSCAN', KEYS[1], redis.call('GET', KEYS[3]) or '0', 'COUNT', SWEEP_COUNT)
local swept = page[2]
for i = 1, #swept, 2 do
  local generation = tonumber(swept[i + 1])
  if string.sub(swept[i], 1, 2) ~= '__' and generation and generation >= FIRST_TIMESTAMP and generation < horizon then
    redis.call('HDEL', KEYS[1], swept[i])
  end
end
redis.call('SET', KEYS[3], page[1], 'PX', ARGV[2])
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local message = cjson.encode({i = ARGV[5], s = seq, e = epoch, k = cjson.decode(ARGV[6]), t = ARGV[7], g = gens})
redis.call(ARGV[3], ARGV[4], message)
return message
"""
    )
    .replace("SWEEP_COUNT", str(SWEEP_COUNT))
    .replace("FIRST_TIMESTAMP", str(FIRST_TIMESTAMP))
)

# KEYS: gens, seq. ARGV: candidate epoch, meta TTL. A different server than the one that wrote the epoch: new epoch.
# Returns the message counter and the epoch; the caller then reads the hash with HSCAN, so a large hash never
# holds the server in one command.
SYNC: Final = """
local server = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local stored = redis.call('HMGET', KEYS[1], '__epoch__', '__server__')
local epoch = stored[1]
if not epoch or stored[2] ~= server then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], '__epoch__', epoch, '__server__', server)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {redis.call('GET', KEYS[2]) or '0', epoch}
"""

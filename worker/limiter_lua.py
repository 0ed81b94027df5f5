"""The Redis slot limiter's Lua scripts (worker/limiter.py runs them; docs/limiter.md explains them).

Each script is one atomic step on the limiter's six keys; every one does bounded work whatever the
backlog.
"""

from __future__ import annotations

# Keys: leases (zset holder -> expiry ms), slots (hash holder -> n), waitq (zset holder -> first
# attempt ms), wslots (hash holder -> n wanted), wseen (zset holder -> waiter expiry ms), passed
# (hash holder -> ms it was first overtaken at).
# The clock is Redis' own TIME so hosts with skewed clocks agree (Redis 7 replicates script effects).
# No script unpacks a list into a command (Lua fails past ~8,000 values) or walks the whole queue:
# expired entries go PURGE_CHUNK at a time, oldest first, and reads check expiry themselves, so an
# expired entry still in the keys never counts.
PURGE_CHUNK = 500
# Waiters too big for the free slots one acquire may pass on its way to the caller.
MAX_OVERTAKEN = 100
# The queue's head that is served largest first: as many waiters as the account has slots, at most
# this many (docs/limiter.md, "Largest first at the head").
PACK_WINDOW = 20
WALK_BATCH = 100

PURGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function unlease(holder)
  redis.call('ZREM', KEYS[1], holder)
  redis.call('HDEL', KEYS[2], holder)
end
local function unwait(holder)
  redis.call('ZREM', KEYS[3], holder)
  redis.call('HDEL', KEYS[4], holder)
  redis.call('ZREM', KEYS[5], holder)
  redis.call('HDEL', KEYS[6], holder)
end
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, @CHUNK@)) do
  unlease(holder)
end
for _, holder in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, @CHUNK@)) do
  unwait(holder)
end
local function live(key, holder)
  local expiry = redis.call('ZSCORE', key, holder)
  return expiry and tonumber(expiry) > now
end
-- Unexpired leases: at most the limit's worth, since each was granted within the limit.
local function live_leases()
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
end
local function used()
  local total = 0
  for _, holder in ipairs(live_leases()) do
    total = total + tonumber(redis.call('HGET', KEYS[2], holder) or '0')
  end
  return total
end
-- Overtaken `starve_ms` ago (always, when starve_ms is 0): it goes first and reserves its slots.
local function starving(other, starve_ms)
  if starve_ms == 0 then
    return true
  end
  local since = redis.call('HGET', KEYS[6], other)
  return since ~= false and now - tonumber(since) >= starve_ms
end
-- The head window's serving order, on entries {holder, n, starving, rank}: the starving first in
-- queue order, then the largest first, queue order among equals.
local function serving_order(a, b)
  if a[3] ~= b[3] then
    return a[3]
  end
  if not a[3] and a[2] ~= b[2] then
    return a[2] > b[2]
  end
  return a[4] < b[4]
end
""".replace("@CHUNK@", str(PURGE_CHUNK))

# ARGV: holder, slots, limit, lease_ms, starve_ms, waiter_ttl_ms, ahead_ms
# The fairness check hands the free slots out up to the caller: first to the queue's head window
# (min(limit, PACK_WINDOW) waiters: those starving in queue order, then the largest first), then in
# queue order. Each live waiter reached that fits takes its slots; one that does not fit reserves
# them if it was overtaken `starve_ms` ago (always, when starve_ms is 0) and is otherwise passed
# (and, if the caller is granted, marked as overtaken now, as is a window waiter ahead of the
# caller in the queue that the window put behind it). Every waiter counted takes at least one
# slot, so it reads at most the window plus budget + 1 of those from the head (O(log N) to get
# there), plus at most MAX_OVERTAKEN passed and PURGE_CHUNK expired ones (removed).
ACQUIRE = (
    PURGE
    + """
local holder, n, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms, starve_ms, waiter_ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if live(KEYS[1], holder) then
  redis.call('ZADD', KEYS[1], now + lease_ms, holder)
  unwait(holder)
  return 1
end
unlease(holder)
if redis.call('ZSCORE', KEYS[5], holder) and not live(KEYS[5], holder) then
  unwait(holder)
end
if not redis.call('ZSCORE', KEYS[3], holder) then
  redis.call('ZADD', KEYS[3], now - tonumber(ARGV[7]), holder)
end
redis.call('HSET', KEYS[4], holder, n)
redis.call('ZADD', KEYS[5], now + waiter_ttl_ms, holder)
local left = limit - used()
if left < n then
  return 0
end
local lapsed, passed, taken = {}, {}, {}
-- The head window: starving waiters first (queue order), then the largest first (queue order
-- among equals); the caller is placed by the same rule.
local head = redis.call('ZRANGE', KEYS[3], 0, math.min(limit, @WINDOW@) - 1)
local entries, my_rank = {}, nil
for rank, other in ipairs(head) do
  local wanted = nil
  if other == holder then
    wanted, my_rank = n, rank
  elseif live(KEYS[5], other) then
    wanted = redis.call('HGET', KEYS[4], other)
  end
  if wanted then
    if tonumber(wanted) <= limit then  -- one wanting more than a lowered limit is never served
      entries[#entries + 1] = {other, tonumber(wanted), starving(other, starve_ms), rank}
    end
  elseif #lapsed < @CHUNK@ then
    lapsed[#lapsed + 1] = other
  end
end
table.sort(entries, serving_order)
-- The whole window is walked when the caller is in it: a waiter it put behind the caller that
-- still fits in what the caller leaves is not overtaken.
local granted = nil
for _, e in ipairs(entries) do
  local other, wanted = e[1], e[2]
  if other == holder then
    granted = true
    left = left - n
  elseif wanted <= left or e[3] then  -- it fits and goes first, or it reserves
    left = left - wanted
    taken[other] = true
  end
  if granted == nil and left < n then
    granted = false
    break
  end
end
-- Overtaken: the window's waiters not served that are ahead of the caller in the queue (all of
-- them when the caller is behind the window).
if granted ~= false then
  for _, e in ipairs(entries) do
    if not taken[e[1]] and e[1] ~= holder and (my_rank == nil or e[4] < my_rank) then
      passed[#passed + 1] = e[1]
    end
  end
end
-- Beyond the window, the walk goes on in queue order (when the caller is not in the window).
local rank = #head
local batch_size = math.min(@BATCH@, left - n + 2)
while granted == nil do
  local batch = redis.call('ZRANGE', KEYS[3], rank, rank + batch_size - 1)
  if #batch == 0 then
    granted = true
  end
  for _, other in ipairs(batch) do
    if other == holder then
      granted = true
      break
    end
    local wanted = redis.call('HGET', KEYS[4], other)
    if wanted and live(KEYS[5], other) then
      wanted = tonumber(wanted)
      if wanted > limit then  -- never served (a lowered limit): it neither takes nor reserves
      elseif wanted <= left or starving(other, starve_ms) then
        left = left - wanted
      elseif #passed < @OVERTAKEN@ then
        passed[#passed + 1] = other
      else
        granted = false
        break
      end
      if left < n then
        granted = false
        break
      end
    elseif #lapsed < @CHUNK@ then
      lapsed[#lapsed + 1] = other
    else
      granted = false
      break
    end
  end
  rank = rank + batch_size
  batch_size = @BATCH@
end
for _, other in ipairs(lapsed) do
  unwait(other)
end
if granted then
  for _, other in ipairs(passed) do
    redis.call('HSETNX', KEYS[6], other, now)
  end
  redis.call('ZADD', KEYS[1], now + lease_ms, holder)
  redis.call('HSET', KEYS[2], holder, n)
  unwait(holder)
  return 1
end
return 0
""".replace("@CHUNK@", str(PURGE_CHUNK))
    .replace("@BATCH@", str(WALK_BATCH))
    .replace("@OVERTAKEN@", str(MAX_OVERTAKEN))
    .replace("@WINDOW@", str(PACK_WINDOW))
)

RELEASE = (
    PURGE
    + """
local freed = live(KEYS[1], ARGV[1]) and 1 or 0
unlease(ARGV[1])
unwait(ARGV[1])
return freed
"""
)

LEAVE_QUEUE = """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
return 1
"""

# ARGV: waiter_ttl_ms, then holders (at most the pump's read of the queue's head).
KEEP_WAITING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  local seen = redis.call('ZSCORE', KEYS[5], ARGV[i])
  if seen and tonumber(seen) > now then
    redis.call('ZADD', KEYS[5], until_ms, ARGV[i])
  end
end
return 1
"""

RENEW = (
    PURGE
    + """
if live(KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
unlease(ARGV[1])
return 0
"""
)

HOLDERS = (
    PURGE
    + """
local flat = {}
for _, holder in ipairs(live_leases()) do
  flat[#flat + 1] = holder
  flat[#flat + 1] = redis.call('HGET', KEYS[2], holder) or '0'
end
return flat
"""
)

# ARGV: limit, starve_ms, count. The first `count` waiters in the order acquire serves them (the
# head window sorted as acquire sorts it, the rest in queue order): the pump dispatches in it, so
# the jobs it sends are the ones the limiter admits (a starving waiter first, above all).
SERVING_ORDER = (
    PURGE
    + """
local limit, starve_ms, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local head = redis.call('ZRANGE', KEYS[3], 0, count - 1)
local window = math.min(limit, @WINDOW@)
local entries, out = {}, {}
for rank, other in ipairs(head) do
  if rank > window then
    out[#out + 1] = other
  else
    local wanted = redis.call('HGET', KEYS[4], other)
    if wanted and live(KEYS[5], other) and tonumber(wanted) <= limit then
      entries[#entries + 1] = {other, tonumber(wanted), starving(other, starve_ms), rank}
    end
  end
end
table.sort(entries, serving_order)
local ordered = {}
for _, e in ipairs(entries) do
  ordered[#ordered + 1] = e[1]
end
for _, other in ipairs(out) do
  ordered[#ordered + 1] = other
end
return ordered
""".replace("@WINDOW@", str(PACK_WINDOW))
)

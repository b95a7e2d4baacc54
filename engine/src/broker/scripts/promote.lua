-- promote.lua: move due tasks from shards' `scheduled` and `retry` sets into their streams.
--
-- KEYS     one triple per shard, any number of shards (on a Redis Cluster, of one slot):
-- KEYS[3i+1]  stream of the shard
-- KEYS[3i+2]  scheduled ZSET of the shard
-- KEYS[3i+3]  retry ZSET of the shard
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  the most members to move from each set in this call
-- Returns  { moved, next_due } where moved counts the members moved over every shard, and
--          next_due is the earliest score still waiting in any of the sets, or -1 when they
--          are all empty.
--
-- Cost: when every set is empty (an idle worker's case), one EXISTS over them all; else one
-- ZRANGE per non-empty set, plus the moves of the due members.
--
-- Safe to run from many workers at once: the read, the XADD and the ZREM happen in one script,
-- so a member is promoted exactly once.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local sets = {}
for i = 1, #KEYS, 3 do
  sets[#sets + 1] = KEYS[i + 1]
  sets[#sets + 1] = KEYS[i + 2]
end
if redis.call('EXISTS', unpack(sets)) == 0 then
  return { 0, -1 }
end
local moved = 0
local next_due = -1
for i = 1, #KEYS, 3 do
  for k = i + 1, i + 2 do
    local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if first[2] and tonumber(first[2]) <= now then
      local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, limit)
      for _, member in ipairs(due) do
        local fields = cmsgpack.unpack(member)
        redis.call('XADD', KEYS[i], '*', unpack(fields))
        redis.call('ZREM', KEYS[k], member)
        moved = moved + 1
      end
      first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    end
    if first[2] then
      local score = tonumber(first[2])
      if next_due < 0 or score < next_due then
        next_due = score
      end
    end
  end
end
return { moved, next_due }

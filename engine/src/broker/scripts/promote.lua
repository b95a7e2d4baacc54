-- promote.lua: move due tasks from shards' `scheduled` and `retry` sets into their streams (a
-- grouped task into its shard's fair set), and feed each stream from its fair set.
--
-- KEYS     five per shard, any number of shards (on a Redis Cluster, of one slot):
-- KEYS[5i+1]  stream of the shard
-- KEYS[5i+2]  scheduled ZSET of the shard
-- KEYS[5i+3]  retry ZSET of the shard
-- KEYS[5i+4]  fair ZSET of the shard
-- KEYS[5i+5]  groups HASH of the shard: a due task with a `group` field goes to the fair set
--             (fair.lua, prepended) instead of the stream, and the stream is fed from the fair
--             set (the fallback that feeds what no settle did: docs/groups.md)
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  the most members to move from each set in this call
-- Returns  { moved, next_due, fair } where moved counts the members moved over every shard,
--          next_due is the earliest score still waiting in any scheduled or retry set, or -1
--          when they are all empty, and fair lists, per shard in KEYS order, how many grouped
--          tasks still wait in its fair set after the feed (empty when every set is empty).
--
-- Cost: when every set is empty (an idle worker's case), one EXISTS over them all; else one
-- ZRANGE per non-empty set, a ZCARD per fair set, plus the moves of the due members.
--
-- Safe to run from many workers at once: the read, the XADD and the ZREM happen in one script,
-- so a member is promoted exactly once.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local sets = {}
for i = 1, #KEYS, 5 do
  sets[#sets + 1] = KEYS[i + 1]
  sets[#sets + 1] = KEYS[i + 2]
  sets[#sets + 1] = KEYS[i + 3]
end
if redis.call('EXISTS', unpack(sets)) == 0 then
  return { 0, -1, {} }
end
local moved = 0
local next_due = -1
local waiting = {}
for i = 1, #KEYS, 5 do
  local stream, fair, groups = KEYS[i], KEYS[i + 3], KEYS[i + 4]
  for k = i + 1, i + 2 do
    local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
    if first[2] and tonumber(first[2]) <= now then
      local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, limit)
      for _, member in ipairs(due) do
        local fields = cmsgpack.unpack(member)
        local group = fair_group_of(fields)
        if group then
          fair_add(fair, groups, member, group)
        else
          redis.call('XADD', stream, '*', unpack(fields))
        end
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
  local left = redis.call('ZCARD', fair)
  if left > 0 then
    left = left - fair_feed(stream, fair, groups)
  end
  waiting[#waiting + 1] = left
end
return { moved, next_due, waiting }

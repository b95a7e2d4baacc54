-- promote.lua: move due tasks from a shard's `scheduled` and `retry` sets into its stream.
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  scheduled ZSET of the shard
-- KEYS[3]  retry ZSET of the shard
-- KEYS[4]  fair ZSET of the shard (optional, with KEYS[5])
-- KEYS[5]  groups HASH of the shard: with both, a due task with a `group` field goes to the
--          fair set (fair.lua, prepended) instead of the stream, and the stream is fed from the
--          fair set (the fallback that feeds what no settle did)
-- ARGV[1]  now, ms since the epoch
-- ARGV[2]  the most members to move from each set in this call
-- Returns  { moved, next_due, fair } where next_due is the earliest score still waiting in either
--          set, or -1 when both are empty, and fair is how many grouped tasks still wait in the
--          fair set (0 without KEYS[4]).
--
-- Safe to run from many workers at once: the read, the XADD and the ZREM happen in one script,
-- so a member is promoted exactly once.
local now = ARGV[1]
local limit = tonumber(ARGV[2])
local fair, groups = KEYS[4], KEYS[5]
local moved = 0
for k = 2, 3 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local fields = cmsgpack.unpack(member)
    local group = groups and fair_group_of(fields)
    if group then
      fair_add(fair, groups, member, group)
    else
      redis.call('XADD', KEYS[1], '*', unpack(fields))
    end
    redis.call('ZREM', KEYS[k], member)
    moved = moved + 1
  end
end
local next_due = -1
for k = 2, 3 do
  local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
  if first[2] then
    local score = tonumber(first[2])
    if next_due < 0 or score < next_due then
      next_due = score
    end
  end
end
local waiting = 0
if groups then
  waiting = redis.call('ZCARD', fair)
  if waiting > 0 then
    waiting = waiting - fair_feed(KEYS[1], fair, groups)
  end
end
return { moved, next_due, waiting }

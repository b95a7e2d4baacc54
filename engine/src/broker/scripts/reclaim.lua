-- reclaim.lua: take over a shard's entries whose lease ran out (their worker is gone).
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  stats HASH of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer taking the entries
-- ARGV[3]  lease in ms: the min idle time of an entry to take it
-- ARGV[4]  XAUTOCLAIM cursor ('0-0' to start)
-- ARGV[5]  the most entries to take
-- ARGV[6]  delivery limit: an entry delivered more often than this is poison
-- Returns  { next_cursor, entries, lost, poison } where entries are { id, fields } to run now,
--          lost is how many pending ids pointed at deleted entries (Redis 7 drops them from
--          the PEL and reports them; we count them, never ignore them), and poison is
--          { id, fields, deliveries } of each entry delivered more often than the limit.
--
-- Poison entries are claimed (the caller owns them) but not run: the caller buries them with
-- settle.lua, like any other outcome, so a tracked task's record reads `dead` with its dlq id
-- and its waiters, cancel mark and unique lock are dealt with in the one place that does so.
--
-- The scan starts at the first pending entry from the cursor on that is idle for the lease
-- (`XPENDING ... IDLE`, the same test XAUTOCLAIM applies), and a sweep that finds none ends at
-- once: a busy shard's PEL holds hundreds of live entries, which XAUTOCLAIM would walk ten per
-- entry asked for (COUNT is the free handler slots: often one), a call each, in every worker
-- of the fleet every round. Entries it skips are not idle enough to be claimed (nor reported
-- lost: XAUTOCLAIM only looks up the stream entries of those that are).
local stream, stats = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local first_idle = redis.call('XPENDING', stream, group, 'IDLE', ARGV[3], ARGV[4], '+', 1)[1]
if not first_idle then
  return { '0-0', {}, 0, {} }
end
local reply = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], first_idle[1], 'COUNT', ARGV[5])
local next_cursor, claimed, deleted = reply[1], reply[2], reply[3] or {}

local lost = #deleted
if lost > 0 then
  redis.call('HINCRBY', stats, 'lost', lost)
end

local runnable, poison = {}, {}
if #claimed > 0 then
  local limit = tonumber(ARGV[6])
  local first, last = claimed[1][1], claimed[#claimed][1]
  local deliveries = {}
  for _, p in ipairs(redis.call('XPENDING', stream, group, first, last, 1000000, consumer)) do
    deliveries[p[1]] = p[4]
  end
  for _, entry in ipairs(claimed) do
    local count = deliveries[entry[1]] or 0
    if count > limit then
      poison[#poison + 1] = { entry[1], entry[2], count }
    else
      runnable[#runnable + 1] = entry
    end
  end
  redis.call('HINCRBY', stats, 'reclaimed', #claimed)
end
return { next_cursor, runnable, lost, poison }

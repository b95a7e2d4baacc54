-- reclaim.lua: take over a shard's entries whose lease ran out (their worker is gone).
--
-- KEYS[1]  stream of the shard
-- KEYS[2]  dlq STREAM of the shard
-- KEYS[3]  stats HASH of the shard
-- ARGV[1]  consumer group
-- ARGV[2]  consumer taking the entries
-- ARGV[3]  lease in ms: the min idle time of an entry to take it
-- ARGV[4]  XAUTOCLAIM cursor ('0-0' to start)
-- ARGV[5]  the most entries to take
-- ARGV[6]  delivery limit: an entry delivered more often than this is poison
-- ARGV[7]  dlq approximate MAXLEN
-- ARGV[8]  now, ms since the epoch
-- ARGV[9]  the reason written on a poison dead letter ('poison', from DeadReason)
-- Returns  { next_cursor, entries, lost, poisoned } where entries are { id, fields } to run now,
--          lost is how many pending ids pointed at deleted entries (Redis 7 drops them from
--          the PEL and reports them; we count them, never ignore them), and poisoned is how
--          many entries went to the dlq with reason ARGV[9].
local stream, dlq, stats = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local reply = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local next_cursor, claimed, deleted = reply[1], reply[2], reply[3] or {}

local lost = #deleted
if lost > 0 then
  redis.call('HINCRBY', stats, 'lost', lost)
end

local runnable = {}
local poisoned = 0
if #claimed > 0 then
  local limit = tonumber(ARGV[6])
  local first, last = claimed[1][1], claimed[#claimed][1]
  local deliveries = {}
  for _, p in ipairs(redis.call('XPENDING', stream, group, first, last, 1000000, consumer)) do
    deliveries[p[1]] = p[4]
  end
  local buried = {}
  -- The dlq's length before the first bury: what the MAXLEN ~ trim drops is counted in
  -- dlq_trimmed, as in settle.lua.
  local dlq_before
  for _, entry in ipairs(claimed) do
    local id, fields = entry[1], entry[2]
    local count = deliveries[id] or 0
    if count > limit then
      fields[#fields + 1] = 'reason'
      fields[#fields + 1] = ARGV[9]
      fields[#fields + 1] = 'error'
      fields[#fields + 1] = 'delivered ' .. count .. ' times without an outcome (limit ' .. limit .. ')'
      fields[#fields + 1] = 'dead_at'
      fields[#fields + 1] = ARGV[8]
      fields[#fields + 1] = 'origin'
      fields[#fields + 1] = stream .. '/' .. id
      fields[#fields + 1] = 'deliveries'
      fields[#fields + 1] = tostring(count)
      dlq_before = dlq_before or redis.call('XLEN', dlq)
      redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
      buried[#buried + 1] = id
    else
      runnable[#runnable + 1] = entry
    end
  end
  if #buried > 0 then
    redis.call('XACK', stream, group, unpack(buried))
    redis.call('XDEL', stream, unpack(buried))
    redis.call('HINCRBY', stats, 'dead', #buried)
    local dropped = dlq_before + #buried - redis.call('XLEN', dlq)
    if dropped > 0 then redis.call('HINCRBY', stats, 'dlq_trimmed', dropped) end
    poisoned = #buried
  end
  redis.call('HINCRBY', stats, 'reclaimed', #claimed)
end
return { next_cursor, runnable, lost, poisoned }

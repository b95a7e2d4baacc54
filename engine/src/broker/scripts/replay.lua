-- replay.lua: move dead letters back into their shard's stream to run again.
--
-- KEYS[1]  dlq STREAM of the shard
-- KEYS[2]  stream of the shard
-- KEYS[3]  stats HASH of the shard
-- ARGV[1..] dlq entry ids
-- Returns  how many entries were replayed (ids no longer in the dlq are skipped)
--
-- The dead-letter fields (reason, error, dead_at, origin, deliveries) are dropped and the
-- attempt count starts again at 0, so the task gets its full retry budget back.
local dropped = { reason = true, error = true, dead_at = true, origin = true, deliveries = true }
local replayed = 0
for i = 1, #ARGV do
  local rows = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if rows[1] then
    local fields, out = rows[1][2], {}
    for j = 1, #fields, 2 do
      local name = fields[j]
      if not dropped[name] then
        out[#out + 1] = name
        out[#out + 1] = (name == 'attempt') and '0' or fields[j + 1]
      end
    end
    redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XDEL', KEYS[1], ARGV[i])
    replayed = replayed + 1
  end
end
if replayed > 0 then
  redis.call('HINCRBY', KEYS[3], 'replayed', replayed)
end
return replayed

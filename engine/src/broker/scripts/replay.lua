-- replay.lua: move dead letters back into their shard's stream to run again.
--
-- KEYS[1]  dlq STREAM of the shard
-- KEYS[2]  stream of the shard
-- KEYS[3]  stats HASH of the shard
-- ARGV[1..] dlq entry ids
-- KEYS[4]  events STREAM of the shard, and KEYS[5..] the task record of each ARGV id, in
--          order (optional: only when #KEYS > 3; a caller that knows the task ids passes them)
-- ARGV[#ARGV - 1], ARGV[#ARGV] with KEYS[4]: now (ms since the epoch) and the events stream's
--          approximate MAXLEN (not entry ids)
-- Returns  how many entries were replayed (ids no longer in the dlq are skipped)
--
-- A replayed task's record, when it has one, reads `queued` again (no expiry: it lives again)
-- and a `replayed` event is written.
--
-- The dead-letter fields (reason, error, dead_at, origin, deliveries) are dropped and the
-- attempt count starts again at 0, so the task gets its full retry budget back.
local dropped = { reason = true, error = true, dead_at = true, origin = true, deliveries = true }
local replayed = 0
local tracked = #KEYS > 3
local last = #ARGV
if tracked then
  last = #ARGV - 2
end
for i = 1, last do
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
    local entry = redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XDEL', KEYS[1], ARGV[i])
    replayed = replayed + 1
    if tracked then
      local rec = KEYS[4 + i]
      if redis.call('HEXISTS', rec, 'state') == 1 then
        local now = ARGV[#ARGV - 1]
        redis.call('HSET', rec, 'state', 'queued', 'attempt', '0', 'entry', entry, 'updated_at', now)
        redis.call('HDEL', rec, 'reason', 'error', 'dlq_id', 'finished_at', 'run_ms', 'result', 'result_codec')
        redis.call('PERSIST', rec)
        local id = ''
        for j = 1, #out, 2 do
          if out[j] == 'id' then id = out[j + 1] end
        end
        redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[#ARGV], '*', 'id', id, 'event', 'replayed', 'at', now)
      end
    end
  end
end
if replayed > 0 then
  redis.call('HINCRBY', KEYS[3], 'replayed', replayed)
end
return replayed

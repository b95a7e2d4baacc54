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
      local fields = record_map(rec)
      if fields.state then
        -- Live again: a HASH of the record's fields (record.lua), without the dead ones and
        -- without expiry.
        local now = ARGV[#ARGV - 1]
        for _, name in ipairs({ 'reason', 'error', 'dlq_id', 'finished_at', 'run_ms', 'result', 'result_codec' }) do
          fields[name] = nil
        end
        fields.state, fields.attempt, fields.entry, fields.updated_at = 'queued', '0', entry, now
        local flat = {}
        for k, v in pairs(fields) do
          flat[#flat + 1] = k
          flat[#flat + 1] = v
        end
        redis.call('DEL', rec)
        redis.call('HSET', rec, unpack(flat))
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

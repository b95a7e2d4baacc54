-- progress.lua: write coalesced progress reports of running tasks of one shard.
--
-- KEYS[1]  events STREAM of the shard
-- KEYS[2..] task record HASHes, one per report
-- ARGV[1]  worker id: only records this worker runs are written (a stale worker, fenced off
--          by a reclaim, no longer matches)
-- ARGV[2]  now, ms since the epoch
-- ARGV[3]  approximate MAXLEN of the events stream
-- ARGV[4..] per report, three values: task id, percent (0-100), message
-- Returns  how many reports were written
local events, worker, now, maxlen = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local written = 0
for i = 2, #KEYS do
  local rec = KEYS[i]
  local a = 4 + (i - 2) * 3
  -- (A final record, a late report's, reads not active: nothing is written.)
  local state, owner = unpack((record_get(rec, { 'state', 'worker' })))
  if state == 'active' and owner == worker then
    redis.call('HSET', rec, 'progress', ARGV[a + 1], 'progress_message', ARGV[a + 2], 'updated_at', now)
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'id', ARGV[a], 'event', 'progress', 'at', now,
      'progress', ARGV[a + 1], 'message', ARGV[a + 2])
    written = written + 1
  end
end
return written

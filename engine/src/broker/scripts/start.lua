-- start.lua: record that a worker starts a batch of tracked tasks of one shard.
--
-- KEYS[1]  events STREAM of the shard
-- KEYS[2..] task record HASHes, one per task, in ARGV's order
-- ARGV[1]  worker id
-- ARGV[2]  now, ms since the epoch
-- ARGV[3]  approximate MAXLEN of the events stream
-- ARGV[4..] per task, four values: task id, attempt, kind, retention ms
-- Returns  one code per task: 0 = run it; 1 = it was cancelled before it started; 2 = its
--          cancel was asked for while an earlier delivery ran (a worker died). For 1 and 2 the
--          worker stops the handler at once and settles the task as cancelled.
--
-- Workers send this without waiting for it before they start the handler, so it may land
-- after the task's settle: a record already final, or already at a later attempt (the run
-- failed and is retrying), is left as it is.
--
-- A record that is missing (a producer that writes none, or one whose queue has tracking
-- off) is created here, so a task's status is known from its start on.
--
-- The started tasks of one call share one `started` event entry (their ids in `ids`, their
-- attempts in `attempt`: docs/wire-format.md "Events").
local events, worker, now, maxlen = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local codes = {}
local started_ids, started_attempts = {}, {}
for i = 2, #KEYS do
  local rec = KEYS[i]
  local a = 4 + (i - 2) * 4
  local id, attempt, kind, retention = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local got, final = record_get(rec, { 'state', 'cancel_requested', 'runs', 'member', 'progress', 'attempt' })
  local state, cancel, runs, member, progress, seen = unpack(got)
  if state == 'cancelled' then
    codes[#codes + 1] = 1
  elseif final or record_final_states[state] or (seen and tonumber(seen) > tonumber(attempt)) then
    codes[#codes + 1] = 0
  elseif cancel == '1' then
    codes[#codes + 1] = 2
  else
    -- One HSET, and an HDEL only of fields that are there: this runs for every started task.
    if state then
      redis.call('HSET', rec, 'state', 'active', 'worker', worker, 'attempt', attempt, 'started_at', now,
        'runs', (tonumber(runs) or 0) + 1, 'updated_at', now)
    else
      redis.call('HSET', rec, 'state', 'active', 'worker', worker, 'attempt', attempt, 'started_at', now,
        'runs', 1, 'updated_at', now, 'kind', kind, 'retention_ms', retention)
    end
    -- (A stale `entry` is harmless: cancel only uses it while the record says `queued`.)
    if member or progress then
      redis.call('HDEL', rec, 'due_at', 'member', 'progress', 'progress_message')
    end
    started_ids[#started_ids + 1] = id
    started_attempts[#started_attempts + 1] = attempt
    codes[#codes + 1] = 0
  end
end
if #started_ids > 0 then
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', 'started', 'at', now,
    'ids', cmsgpack.pack(started_ids), 'per_id', 'attempt', 'worker', worker,
    'attempt', cmsgpack.pack(started_attempts))
end
return codes

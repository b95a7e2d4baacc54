-- schedules_fired.lua: move a schedule's last fire time forward (never back).
--
-- Called after a fire time's task was enqueued (or found enqueued already: its unique key
-- was taken), or when a missed fire time is skipped. Racing schedulers may call it in any
-- order: the state only moves forward, and a schedule removed meanwhile is not brought back.
--
-- KEYS[1]  definitions HASH (rivulet:{sched}:defs)
-- KEYS[2]  last-fired HASH (rivulet:{sched}:fired)
-- ARGV[1]  schedule name
-- ARGV[2]  the fire time handled, ms since the epoch
-- Returns  1 when the state moved, 0 otherwise
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if last >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
